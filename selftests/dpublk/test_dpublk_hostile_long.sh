#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dpublk-timeout: 7800
# test_dpublk_hostile until HOSTILE_ANOMALIES (default 100000) anomalies
# were injected (`make hostile` runs it with a raised rate: dpuemu
# --hostile RATE@hook). Every fio round verifies every block; 0 errors,
# 0 kernel warnings, every completion kind injected.
export HOSTILE_ANOMALIES=${HOSTILE_ANOMALIES:-100000}
export HOSTILE_SECONDS=${HOSTILE_SECONDS:-60}
exec "$(dirname "$0")/test_dpublk_hostile.sh"
