// SPDX-License-Identifier: GPL-2.0

//! configfs features the in-tree `kernel::configfs` abstraction lacks.
//!
//! - Groups the driver creates itself: [`ChildGroup`] registers a group
//!   below an already registered parent (like `configfs_register_group`
//!   users in C), and [`DefaultGroup`] adds a default group to a group that
//!   is being created, so it appears together with its parent (like
//!   `configfs_add_default_group`).
//! - [`GroupAddress`]: where a group's C `config_group` lives, recorded once
//!   it is initialized, so the driver can make it depended on.
//! - Item dependencies ([`depend_unlocked`], [`undepend`]): a depended-on
//!   directory cannot be removed, and `rmdir` fails with `EBUSY`, which is
//!   how configfs lets a driver refuse the removal of something in use.
//!
//! Every group made here is allocated as an `Arc<Group<D>>` and handed to
//! configfs with `Arc::into_raw`, exactly as the in-tree abstraction does
//! for groups made by `mkdir`, so the abstraction's `release` callback
//! (which turns the pointer back into the `Arc`) frees it once configfs
//! drops its last reference.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::{
    bindings,
    configfs::{Group, HasGroup},
    prelude::*,
    sync::Arc,
};

/// The C group embedded in a configfs group, or null until recorded.
pub(crate) struct GroupAddress(AtomicPtr<bindings::config_group>);

impl GroupAddress {
    /// An address not yet recorded.
    pub(crate) const fn new() -> Self {
        Self(AtomicPtr::new(ptr::null_mut()))
    }

    /// Records where `group` lives. `group` is pinned inside its `Arc`, so
    /// the address stays valid for as long as the group exists.
    pub(crate) fn record<D>(&self, group: &Group<D>) {
        // SAFETY: `group` is a valid, initialized `Group<D>`.
        let raw = unsafe { <Group<D> as HasGroup<D>>::group(group) };
        self.0.store(raw.cast_mut(), Ordering::Release);
    }

    /// The recorded address, if any.
    pub(crate) fn get(&self) -> Option<*mut bindings::config_group> {
        let raw = self.0.load(Ordering::Acquire);
        (!raw.is_null()).then_some(raw)
    }
}

/// Turns a group initializer into a group owned by configfs's reference
/// count: the returned pointer carries the initial reference.
fn allocate<D>(init: impl PinInit<Group<D>, Error>) -> Result<*mut bindings::config_group> {
    let group: Arc<Group<D>> = Arc::pin_init(init, GFP_KERNEL)?;
    let raw = Arc::into_raw(group);
    // SAFETY: `raw` points to a live `Group<D>` (leaked above).
    Ok(unsafe { <Group<D> as HasGroup<D>>::group(raw) }.cast_mut())
}

/// Drops the reference on `group` this module holds; the last one frees the
/// group through the abstraction's `release`.
///
/// # Safety
///
/// `group` is a group made by [`allocate`] and the caller owns one of its
/// references.
unsafe fn put(group: *mut bindings::config_group) {
    // SAFETY: By the function's requirements.
    unsafe { bindings::config_item_put(&raw mut (*group).cg_item) };
}

/// A group the driver registered below a parent group. Dropping it
/// unregisters it (with its default groups) and drops the driver's
/// reference.
///
/// # Invariants
///
/// `group` was made by [`allocate`], is registered with configfs, and the
/// initial reference belongs to this value.
pub(crate) struct ChildGroup {
    group: *mut bindings::config_group,
}

// SAFETY: The handle only unregisters and puts the group, which configfs
// allows from any thread.
unsafe impl Send for ChildGroup {}
// SAFETY: `&ChildGroup` allows no operation at all.
unsafe impl Sync for ChildGroup {}

impl ChildGroup {
    /// Creates the group described by `init` and registers it below
    /// `parent`.
    ///
    /// # Safety
    ///
    /// `parent` is a registered configfs group that stays registered until
    /// the returned value is dropped.
    pub(crate) unsafe fn register<D>(
        parent: *mut bindings::config_group,
        init: impl PinInit<Group<D>, Error>,
    ) -> Result<Self> {
        let group = allocate(init)?;
        // SAFETY: `parent` is registered (function requirement) and `group`
        // is an initialized group that is not registered anywhere yet.
        let rc = unsafe { bindings::configfs_register_group(parent, group) };
        if rc != 0 {
            // SAFETY: We own the initial reference of the unregistered group.
            unsafe { put(group) };
            return Err(Error::from_errno(rc));
        }
        // INVARIANT: `group` is registered and we own its initial reference.
        Ok(Self { group })
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        // SAFETY: The group is registered (type invariant); unregistering
        // removes its directory and its default groups.
        unsafe { bindings::configfs_unregister_group(self.group) };
        // SAFETY: We own the initial reference (type invariant).
        unsafe { put(self.group) };
    }
}

/// A default group of a parent group: it appears and disappears with the
/// parent's directory. The value lives in the parent's data; dropping it
/// (when the parent is released) drops the driver's reference.
///
/// # Invariants
///
/// `group` was made by [`allocate`] and the initial reference belongs to
/// this value.
pub(crate) struct DefaultGroup {
    group: *mut bindings::config_group,
}

// SAFETY: See `ChildGroup`.
unsafe impl Send for DefaultGroup {}
// SAFETY: See `ChildGroup`.
unsafe impl Sync for DefaultGroup {}

impl DefaultGroup {
    /// Creates the group described by `init`, not linked anywhere yet.
    pub(crate) fn new<D>(init: impl PinInit<Group<D>, Error>) -> Result<Self> {
        // INVARIANT: `allocate` hands us the initial reference.
        Ok(Self {
            group: allocate(init)?,
        })
    }

    /// The C group, for [`DefaultGroup::link`].
    pub(crate) fn raw(&self) -> *mut bindings::config_group {
        self.group
    }

    /// Makes `group` (from [`DefaultGroup::raw`]) a default group of
    /// `parent`.
    ///
    /// # Safety
    ///
    /// `parent` is an initialized group that configfs has not linked yet
    /// (this runs while the parent is being created in `make_group`),
    /// `group` is not linked anywhere, and the `DefaultGroup` that owns
    /// `group` is dropped no earlier than the parent's data.
    pub(crate) unsafe fn link(
        parent: *mut bindings::config_group,
        group: *mut bindings::config_group,
    ) {
        // SAFETY: Nothing else can see `parent` or `group` yet (function
        // requirement), so this is `configfs_add_default_group()`, a plain
        // `list_add_tail(&group->group_entry, &parent->default_groups)`
        // on two initialized list heads.
        unsafe {
            let head = &raw mut (*parent).default_groups;
            let entry = &raw mut (*group).group_entry;
            let last = (*head).prev;
            (*entry).next = head;
            (*entry).prev = last;
            (*last).next = entry;
            (*head).prev = entry;
        }
    }
}

/// Makes `children` default groups of the group `init` creates, once it is
/// initialized and before configfs links it, so they appear and disappear
/// with it (the `configfs_add_default_group()` calls of a C `make_group`).
///
/// # Safety
///
/// Each of `children` is the [`DefaultGroup::raw`] of a [`DefaultGroup`]
/// that the data of the group made by `init` owns (so it is dropped no
/// earlier than that data), and none of them is linked anywhere else.
pub(crate) unsafe fn with_default_groups<D, const N: usize>(
    init: impl PinInit<Group<D>, Error>,
    children: [*mut bindings::config_group; N],
) -> impl PinInit<Group<D>, Error> {
    init.pin_chain(move |group| {
        // SAFETY: `group` is initialized, and configfs links it only after
        // this initializer returns (it is being created), so it is the
        // unlinked parent `DefaultGroup::link` asks for; the children are
        // unlinked and owned by its data (function requirement).
        unsafe {
            let parent = <Group<D> as HasGroup<D>>::group(&*group).cast_mut();
            for child in children {
                DefaultGroup::link(parent, child);
            }
        }
        Ok(())
    })
}

impl Drop for DefaultGroup {
    fn drop(&mut self) {
        // SAFETY: We own the initial reference (type invariant); configfs
        // unlinked the group together with its parent before the parent's
        // data is dropped.
        unsafe { put(self.group) };
    }
}

/// Makes `group` depended on: until [`undepend`], `rmdir` of its directory
/// fails with `EBUSY`.
///
/// # Safety
///
/// Called from a configfs callback (attribute store) on `group` or one of
/// its descendants, while `group` is registered.
pub(crate) unsafe fn depend_unlocked(group: *mut bindings::config_group) -> Result {
    // SAFETY: `group` is registered (function requirement), so `cg_subsys`
    // was set when it was linked and points to its live subsystem.
    let rc = unsafe {
        bindings::configfs_depend_item_unlocked((*group).cg_subsys, &raw mut (*group).cg_item)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::from_errno(rc))
    }
}

/// Undoes one [`depend_unlocked`].
///
/// # Safety
///
/// `group` was made depended on by [`depend_unlocked`] and not undepended
/// since.
pub(crate) unsafe fn undepend(group: *mut bindings::config_group) {
    // SAFETY: By the function's requirements the item is depended on and
    // therefore still registered.
    unsafe { bindings::configfs_undepend_item(&raw mut (*group).cg_item) };
}
