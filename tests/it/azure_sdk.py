"""Drives the fake ARM (tests/it/fake_azure.rs) with Microsoft's own Python
SDK, as crabbox's fidelity test: the identity library gets a token from the
fake's authority, the management clients create the shared network, a
public IP, a NIC and a VM (long-running operations through their pollers),
list the VMs (paged), and delete VM, NIC and IP with their pollers.

Prints one JSON object; exit 3 when the SDK is not installed."""

import json
import os
import sys

try:
    from azure.identity import ClientSecretCredential
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.resource.resources import ResourceManagementClient
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"the Azure SDK is not installed: {e}", file=sys.stderr)
    sys.exit(3)

def value(x):
    """An enum's wire value (the SDK's str enums print as their names)."""
    return getattr(x, "value", x)


url = os.environ["FAKE_AZURE_URL"]
sub = os.environ["FAKE_AZURE_SUBSCRIPTION"]
scopes = ["https://management.azure.com/.default"]
credential = ClientSecretCredential(
    os.environ["FAKE_AZURE_TENANT"],
    os.environ["FAKE_AZURE_CLIENT_ID"],
    os.environ["FAKE_AZURE_CLIENT_SECRET"],
    authority=url,
    disable_instance_discovery=True,
)
kw = {"base_url": url, "credential_scopes": scopes, "polling_interval": 0}
resources = ResourceManagementClient(credential, sub, **kw)
network = NetworkManagementClient(credential, sub, **kw)
compute = ComputeManagementClient(credential, sub, **kw)

rg = "sdk-rg"
tags = {"managed_by": "crabbox", "crabbox": "true"}
resources.resource_groups.create_or_update(rg, {"location": "eastus", "tags": tags})
# Request bodies in ARM's own (REST) shape: the SDK's dict input is sent as
# written.
vnet = network.virtual_networks.begin_create_or_update(
    rg,
    "crabbox-vnet",
    {
        "location": "eastus",
        "tags": tags,
        "properties": {
            "addressSpace": {"addressPrefixes": ["10.42.0.0/16"]},
            "subnets": [{"name": "crabbox-subnet", "properties": {"addressPrefix": "10.42.0.0/24"}}],
        },
    },
).result()
subnet = network.subnets.get(rg, "crabbox-vnet", "crabbox-subnet")
nsg = network.network_security_groups.begin_create_or_update(
    rg,
    "crabbox-nsg",
    {
        "location": "eastus",
        "tags": tags,
        "properties": {
            "securityRules": [
                {
                    "name": "crabbox-ssh-2222-0",
                    "properties": {
                        "protocol": "Tcp",
                        "access": "Allow",
                        "direction": "Inbound",
                        "priority": 100,
                        "sourceAddressPrefix": "198.51.100.7/32",
                        "sourcePortRange": "*",
                        "destinationAddressPrefix": "*",
                        "destinationPortRange": "2222",
                    },
                }
            ]
        },
    },
).result()
lease_tags = {"crabbox": "true", "pond": "sdk", "lease": "cbx_0123456789ab"}
names = []
for i in range(2):
    name = f"crabbox-sdk-{i}"
    pip = network.public_ip_addresses.begin_create_or_update(
        rg,
        f"{name}-pip",
        {
            "location": "eastus",
            "tags": lease_tags,
            "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static"},
        },
    ).result()
    nic = network.network_interfaces.begin_create_or_update(
        rg,
        f"{name}-nic",
        {
            "location": "eastus",
            "tags": lease_tags,
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "ipconfig",
                        "properties": {"subnet": {"id": subnet.id}, "publicIPAddress": {"id": pip.id}},
                    }
                ],
                "networkSecurityGroup": {"id": nsg.id},
            },
        },
    ).result()
    vm = compute.virtual_machines.begin_create_or_update(
        rg,
        name,
        {
            "location": "eastus",
            "tags": lease_tags,
            "properties": {
                "hardwareProfile": {"vmSize": "Standard_B2s"},
                "storageProfile": {
                    "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
                    "osDisk": {"name": f"{name}-osdisk", "createOption": "FromImage", "managedDisk": {"storageAccountType": "StandardSSD_LRS"}},
                },
                "osProfile": {
                    "computerName": name,
                    "adminUsername": "crabbox",
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "ssh": {"publicKeys": [{"path": "/home/crabbox/.ssh/authorized_keys", "keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake sdk"}]},
                    },
                },
                "networkProfile": {"networkInterfaces": [{"id": nic.id}]},
                "priority": "Spot",
                "evictionPolicy": "Delete",
                "billingProfile": {"maxPrice": -1},
            },
        },
    ).result()
    names.append((vm.name, value(vm.provisioning_state), pip.ip_address, vm.storage_profile.os_disk.managed_disk.id))

listed = sorted(vm.name for vm in compute.virtual_machines.list(rg))
ips = sorted(p.name for p in network.public_ip_addresses.list(rg))
for name, _, _, disk in names:
    compute.virtual_machines.begin_delete(rg, name).result()
    network.network_interfaces.begin_delete(rg, f"{name}-nic").result()
    network.public_ip_addresses.begin_delete(rg, f"{name}-pip").result()
    compute.disks.begin_delete(rg, disk.rsplit("/", 1)[1]).result()
left = sorted(vm.name for vm in compute.virtual_machines.list(rg))
print(
    json.dumps(
        {
            "vnet": value(vnet.provisioning_state),
            "nsg_rules": [r.name for r in nsg.security_rules],
            "created": names,
            "listed": listed,
            "ips": ips,
            "left": left,
        }
    )
)
