#!/bin/sh
# CRIU's action script for berth's dumps (berth.runtime.criu._with_post_dump): at post-dump,
# ask the berth that runs CRIU through its pipes; every other step goes on at once.
[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0
echo post-dump > "/proc/$BERTH_HOOK/fd/$BERTH_HOOK_REQ" || exit 1
read -r ok < "/proc/$BERTH_HOOK/fd/$BERTH_HOOK_ACK" && [ "$ok" = ok ]
