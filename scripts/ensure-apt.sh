#!/usr/bin/env bash
# Install the Debian packages the test suite and the demo need, or name them and stop.
# podman+runc: the container engine where no Docker answers; debootstrap: the base image with no
# registry; equivs: the local apt repository the Ansible tests build; numactl: probe binding;
# openssh-client: Ansible and testinfra reach the test host over SSH;
# golang-github-docker-docker-dev: Docker's real default seccomp profile
# (/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json), which the
# placement tests pass to Podman (Podman's own profile allows set_mempolicy without CAP_SYS_NICE);
# chromium: the report test opens `gh200 report`'s page headless.
set -euo pipefail
pkgs=(podman runc debootstrap equivs numactl uidmap slirp4netns fuse-overlayfs openssh-client git make
  golang-github-docker-docker-dev chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
else
  echo "error: missing Debian packages: ${missing[*]} (fix: sudo apt-get install ${missing[*]})" >&2
  exit 2
fi
