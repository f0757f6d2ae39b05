#!/usr/bin/env bash
# The whole test run: the host suite, then the real-kernel suite (both run
# even when the first fails). Reports land in .ci-host.json and .ci-kernel.json.
set -u
cd "$(dirname "$0")/.."
npm test
host=$?
npm run test:kernel
kernel=$?
[ $host -eq 0 ] && [ $kernel -eq 0 ]
