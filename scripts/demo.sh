#!/usr/bin/env bash
# The main job on the local default: install everything, build the component images from
# Debian packages, then build examples/web.yml and bring up a two-machine QEMU cluster running
# it (examples/local-cluster.yml). `scripts/demo.sh down` removes the cluster again. provision
# runs from the checkout's .venv (scripts/setup.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PROVISION=.venv/bin/provision
if [ "${1:-up}" = "down" ]; then
  exec "$PROVISION" down examples/local-cluster.yml
fi
"$PROVISION" pkg build --all
"$PROVISION" up examples/local-cluster.yml
echo
echo "The cluster runs in the background. Try (after '. .venv/bin/activate'):"
echo "  provision status examples/local-cluster.yml"
echo "  provision ps"
echo "  scripts/demo.sh down"
