// SPDX-License-Identifier: GPL-2.0

//! The management tree at `/sys/kernel/config/dpublk/`.
//!
//! See Documentation/configfs.rst for the ABI:
//!
//! ```text
//! dpublk/
//!     features, version
//!     ssds/<name>/                  a local SSD and its hand-over
//!     volumes/<name>/               a volume on the accelerator
//!     volumes/<name>/snapshots/<s>/ its snapshots
//!     nvmf/ports/<id>/, nvmf/subsystems/<nqn>/   the NVMe/TCP target
//! ```
//!
//! Every attribute write is parsed strictly ([`parse`]); a refusal returns
//! the documented errno and logs one line naming the object, the attribute
//! and the reason. The accelerator validates every command again.

mod nvmf;
mod parse;
mod snapshot;
mod ssd;
mod volume;

use crate::{
    configfs_ext::ChildGroup,
    management::{self, LIST_ENTRY_BYTES},
    shim::{
        sqe::SubmissionEntry,
        vendor::{self, VolumeListEntry},
        wire::{c_string_bytes, Wire},
    },
};
use kernel::{
    configfs::{self, AttributeOperations, HasGroup},
    configfs_attrs,
    fmt::Write as _,
    page::PAGE_SIZE,
    prelude::*,
    sync::Arc,
};
use ssd::SsdState;

/// Features this build of the driver implements, one word each.
const FEATURES: &str = "pci\nssds\nvolumes\nsnapshots\nnvmf\n";

pub(crate) fn subsystem() -> impl PinInit<configfs::Subsystem<Root>, Error> {
    let item_type = configfs_attrs! {
        container: configfs::Subsystem<Root>,
        data: Root,
        attributes: [
            features: 0,
            version: 1,
            volume_list: 2,
        ],
    };
    configfs::Subsystem::new(c"dpublk", item_type, try_pin_init!(Root {}))
}

/// The root directory of the tree.
#[pin_data]
pub(crate) struct Root {}

#[vtable]
impl AttributeOperations<0> for Root {
    type Data = Root;

    fn show(_root: &Root, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mut writer = kernel::str::Formatter::new(page);
        writer.write_str(FEATURES)?;
        Ok(writer.bytes_written())
    }
}

#[vtable]
impl AttributeOperations<1> for Root {
    type Data = Root;

    fn show(_root: &Root, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mut writer = kernel::str::Formatter::new(page);
        writer.write_fmt(format_args!("{}\n", crate::DRIVER_VERSION))?;
        Ok(writer.bytes_written())
    }
}

#[vtable]
impl AttributeOperations<2> for Root {
    type Data = Root;

    /// The accelerator's volumes as it lists them, one `NAME NSID SIZE
    /// STATE` line each (`clone` appended for clones): what tests compare
    /// the handles in `volumes/` with.
    fn show(_root: &Root, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mgmt = management::current()?;
        let entries = mgmt.read_list(SubmissionEntry::new(vendor::opcode::VOLUME_LIST, 0))?;
        let mut w = kernel::str::Formatter::new(page);
        let mut listed = entries
            .chunks_exact(LIST_ENTRY_BYTES)
            .filter_map(VolumeListEntry::read_from)
            .peekable();
        let mut left = entries.len() / LIST_ENTRY_BYTES;
        while let Some(e) = listed.next() {
            if PAGE_SIZE - w.bytes_written() < 2 * volume::LIST_LINE_MAX && listed.peek().is_some()
            {
                w.write_fmt(format_args!("more {left}\n"))?;
                break;
            }
            let flags = e.flags.get();
            w.write_fmt(format_args!(
                "{} {} {} {}{}\n",
                bstr(c_string_bytes(&e.name)),
                e.nsid.get(),
                e.size_bytes.get(),
                volume::state_word(flags),
                if flags & vendor::VOLUME_FLAG_CLONE != 0 {
                    " clone"
                } else {
                    ""
                },
            ))?;
            left -= 1;
        }
        Ok(w.bytes_written())
    }
}

/// The fixed directories below the root (`ssds/`, `volumes/`), registered
/// once the subsystem is.
///
/// Field order is drop order: volumes go before SSDs. Both are empty by
/// then: every directory a user made holds a module reference, so the
/// module cannot unload while one exists.
pub(crate) struct Tree {
    nvmf: Option<ChildGroup>,
    volumes: Option<ChildGroup>,
    ssds: Option<ChildGroup>,
}

impl Tree {
    pub(crate) const fn new() -> Self {
        Self {
            nvmf: None,
            volumes: None,
            ssds: None,
        }
    }

    /// Registers the fixed directories below `root`.
    pub(crate) fn populate(&mut self, root: &configfs::Subsystem<Root>) -> Result {
        // SAFETY: `root` is a registered subsystem.
        let root_group = unsafe { <configfs::Subsystem<Root> as HasGroup<Root>>::group(root) };
        let root_group = root_group.cast_mut();
        // SAFETY: The subsystem stays registered until after `Tree` is
        // dropped (field order of the module).
        self.ssds = Some(unsafe { ChildGroup::register(root_group, ssd::SsdsDir::new()?)? });
        // SAFETY: As above.
        self.volumes =
            Some(unsafe { ChildGroup::register(root_group, volume::VolumesDir::new()?)? });
        // SAFETY: As above.
        self.nvmf = Some(unsafe { ChildGroup::register(root_group, nvmf::NvmfDir::new()?)? });
        Ok(())
    }
}

/// Objects that refer to each other by name.
///
/// Lock order: the registry lock is the innermost lock of the tree. It is
/// held only to read or change the list of SSD handles and their claims,
/// never while taking an SSD handle's lock and never across a command to
/// the accelerator, so a slow command (an SSD attach, a scrub) never stalls
/// `mkdir`, `rmdir` or the volume writes that look SSDs up by name. Where a
/// volume's lock is held, it is taken before the registry.
pub(crate) struct Registry {
    ssds: KVec<Arc<SsdState>>,
}

kernel::sync::global_lock! {
    // SAFETY: Initialized in the module initializer before configfs is
    // registered.
    unsafe(uninit) static REGISTRY: Mutex<Registry> = Registry { ssds: KVec::new() };
}

/// Prepares the registry; called once from the module initializer.
pub(crate) fn init_registry() {
    // SAFETY: Called exactly once, before configfs exists.
    unsafe { REGISTRY.init() };
}

/// A copy of an SSD handle's name (for messages and lookups that outlive
/// the registry lock).
fn owned_name(state: &SsdState) -> Option<KVec<u8>> {
    let mut name = KVec::new();
    name.extend_from_slice(&state.name, GFP_KERNEL).ok()?;
    Some(name)
}

impl Registry {
    /// Adds a new SSD handle.
    fn add_ssd(state: Arc<SsdState>) -> Result {
        REGISTRY.lock().ssds.push(state, GFP_KERNEL)?;
        Ok(())
    }

    /// Removes an SSD handle; its claim on an SSD ends with it.
    fn forget_ssd(state: &Arc<SsdState>) {
        let mut registry = REGISTRY.lock();
        registry.ssds.retain(|s| !Arc::ptr_eq(s, state));
    }

    /// Claims SSD `index` for `state`'s `device` write in progress: returns
    /// the name of another handle that stands for or claims the same SSD
    /// (`EEXIST`), or refuses a second `device` write to the same handle
    /// running at the same time (`EBUSY`). The claim ends with
    /// [`SsdState::end_claim`].
    fn claim_ssd(state: &SsdState, index: u16) -> Result<(), Option<KVec<u8>>> {
        let registry = REGISTRY.lock();
        for s in registry.ssds.iter() {
            if !core::ptr::eq(&**s, state) && s.claims(index) {
                return Err(owned_name(s));
            }
        }
        if state.start_claim(index) {
            Ok(())
        } else {
            Err(None)
        }
    }

    /// The SSD handle called `name`: its index and whether it is attached.
    fn ssd_by_name(name: &[u8]) -> Option<(Option<u16>, bool)> {
        let registry = REGISTRY.lock();
        registry
            .ssds
            .iter()
            .find(|s| s.name[..] == *name)
            .map(|s| (s.index(), s.is_attached()))
    }

    /// The handle name of SSD `index`, if one exists.
    fn ssd_name(index: u16) -> Option<KVec<u8>> {
        let registry = REGISTRY.lock();
        let s = registry.ssds.iter().find(|s| s.index() == Some(index))?;
        owned_name(s)
    }
}

/// A name's bytes as text (names are ASCII; anything else shows as `?`).
pub(crate) fn bstr(bytes: &[u8]) -> &str {
    core::str::from_utf8(bytes).unwrap_or("?")
}

/// Logs why a write to `dir/name/attr` is refused and returns `err`.
pub(crate) fn refuse(dir: &str, name: &[u8], attr: &str, why: &str, err: Error) -> Error {
    pr_err!("{dir}/{}: {attr}: {why} ({err:?})\n", bstr(name));
    err
}

/// [`refuse`] as a result.
pub(crate) fn report<T>(dir: &str, name: &[u8], attr: &str, why: &str, err: Error) -> Result<T> {
    Err(refuse(dir, name, attr, why, err))
}
