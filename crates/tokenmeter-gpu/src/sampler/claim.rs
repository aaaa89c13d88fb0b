//! GPUs claimed by a sampler of this process, so that no GPU is reported (and billed) twice.
//! Only sources whose instances all read the same GPUs ([`GpuSource::process_wide`], NVML)
//! claim.
//!
//! [`GpuSource::process_wide`]: crate::GpuSource::process_wide

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use crate::source::GpuIdentity;

/// UUIDs of the GPUs a live sampler reports.
static CLAIMED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn claimed() -> MutexGuard<'static, Option<HashSet<String>>> {
    tokenmeter_core::emit::lock(&CLAIMED)
}

/// The GPUs a sampler holds; released when it is dropped.
#[derive(Debug, Default)]
pub(super) struct Claims {
    uuids: Vec<String>,
}

impl Claims {
    /// Claims each of `gpus` that no other sampler holds; returns those held elsewhere.
    pub(super) fn claim(&mut self, gpus: &mut Vec<GpuIdentity>) -> Vec<GpuIdentity> {
        let mut all = claimed();
        let set = all.get_or_insert_with(HashSet::new);
        let (mine, taken): (Vec<_>, Vec<_>) =
            gpus.drain(..).partition(|g| set.insert(g.uuid.clone()));
        self.uuids.extend(mine.iter().map(|g| g.uuid.clone()));
        *gpus = mine;
        taken
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        if let Some(set) = claimed().as_mut() {
            for uuid in &self.uuids {
                set.remove(uuid);
            }
        }
    }
}
