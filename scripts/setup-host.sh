#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Host-side tools for the userspace build: cargo with rustfmt and clippy.
. "$(dirname "$0")/lib.sh"
ensure_host_packages
command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) first"
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >/dev/null 2>&1 ||
	die "cargo fmt is missing and cannot be installed"
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >/dev/null 2>&1 ||
	die "cargo clippy is missing and cannot be installed"
