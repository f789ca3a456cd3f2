# shellcheck shell=bash
# Sourced by scripts/demo and scripts/test: installs what a fresh Debian 12
# machine needs to build epnix-deploy and to boot its test hosts. Idempotent:
# a second run installs nothing.

# Debian packages: Nix for evaluating and building tops, debootstrap and
# systemd-nspawn for the test hosts, ssh for reaching them, shellcheck for
# the host-side scripts and these ones.
PACKAGES=(nix-bin debootstrap systemd-container openssh-client socat procserv python3-pip ca-certificates shellcheck
  autoconf automake g++ make)

setup_log() { printf 'setup: %s\n' "$*" >&2; }

setup_machine() {
  if [[ $(id -u) != 0 ]]; then
    setup_log "error: run this as root: it installs packages and boots containers"
    exit 2
  fi
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    # A pip that already works (e.g. a Python of the machine's own) will do.
    if [[ $pkg == python3-pip ]] && python3 -m pip --version >/dev/null 2>&1; then
      continue
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    setup_log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    setup_log "error: cargo was not found; install a Rust toolchain (1.85 or later), e.g. with rustup"
    exit 2
  fi
}
