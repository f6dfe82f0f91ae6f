//! Azure VM backup: regions with their worker infrastructure and private endpoints, and the
//! protected VMs.

use serde::{Deserialize, Serialize};

/// Azure VM backup on this server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Azure {
    /// Regions with worker infrastructure.
    pub regions: Vec<AzureRegion>,
    /// Protected virtual machines.
    pub vms: Vec<AzureVm>,
}

/// The worker infrastructure in one Azure region (private network deployment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AzureRegion {
    /// Region name, e.g. `westeurope`.
    pub name: String,
    /// Virtual network the workers run in.
    pub vnet: String,
    /// Storage account holding worker binaries and queues.
    pub storage_account: String,
    /// Worker instances.
    pub workers: Vec<Worker>,
    /// Private endpoints in the workers' network.
    pub private_endpoints: Vec<PrivateEndpoint>,
}

/// A worker instance (a short-lived Linux VM that moves the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    /// Azure VM size.
    pub vm_size: String,
    /// Lifecycle state.
    pub state: WorkerState,
}

/// Lifecycle of a worker instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Stopped and not billed.
    Deallocated,
    /// Being created and configured.
    Deploying,
    /// Processing a VM.
    Running,
    /// Being stopped.
    Deallocating,
}

/// What a private endpoint gives access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// Azure Blob Storage (worker binaries, backup data).
    Blob,
    /// Azure Queue Storage (talking to the workers).
    Queue,
    /// Disk access resources (reading snapshots).
    DiskAccess,
}

/// A private endpoint in a region's worker network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivateEndpoint {
    pub name: String,
    /// Blob, queue or disk access.
    pub kind: EndpointKind,
    /// Private address in the vnet.
    pub address: String,
    /// Whether the endpoint is approved and usable.
    pub connected: bool,
}

/// A protected Azure VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AzureVm {
    /// Stable id (`vm-N`).
    pub id: String,
    /// VM name.
    pub name: String,
    /// Region it runs in.
    pub region: String,
    /// Number of attached disks.
    pub disks: u32,
    /// Provisioned size of all disks.
    pub provisioned_bytes: u64,
    /// Space actually written on the disks.
    pub used_bytes: u64,
    /// Share of the used space that changes per day, in thousandths (45 = 4.5 %).
    pub daily_change_permille: u32,
}
