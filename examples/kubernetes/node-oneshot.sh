#!/usr/bin/env bash
# Seed the shared disk once from a node (or any machine that mounts the disk), without
# creating a pod: mount the image's filesystem with the node's container tooling, then run
# nix-seed with the image's /nix as the source.
#
#   sudo IMAGE=registry.example.com/my-nix-image:1.0 ./node-oneshot.sh
#
# Settings (environment variables):
#   IMAGE     the Nix image to seed from (required)
#   TARGET    the shared store on the network disk    (default /mnt/vepfs/nix/nix)
#   METHOD    ctr | podman                           (default: ctr if present, else podman)
#   PLATFORM  the image's platform to pull            (default: this node's, linux/amd64 or
#             linux/arm64: its store paths, and its nix-seed, are for this node)
#   NIX_SEED  the nix-seed binary (default: the image's /usr/local/bin/nix-seed if it has
#             one, else nix-seed from PATH). The binary is static: a copy taken from any
#             image runs on the node.
#
# Needs root: mounting images, and chown so the copies keep the store's owners.
#
# Other ways to get an image's /nix onto the node, then run the same nix-seed command:
#   skopeo + umoci (no container engine needed):
#     skopeo copy docker://IMAGE oci:/var/tmp/img:seed
#     umoci raw unpack --image /var/tmp/img:seed /var/tmp/rootfs   # as root: keeps owners
#     nix-seed seed --source /var/tmp/rootfs/nix --target ... --allow-non-mountpoint
#   docker:
#     docker create --name nix-src IMAGE && docker export nix-src | tar -x -C /var/tmp/rootfs
#   crictl can pull images but not mount them: on a containerd node, use ctr (below) with
#   the namespace k8s.io, which is where the kubelet's images are.
set -euo pipefail

IMAGE="${IMAGE:?set IMAGE to the Nix image to seed from, e.g. IMAGE=registry.example.com/my-nix-image:1.0}"
TARGET="${TARGET:-/mnt/vepfs/nix/nix}"
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac
PLATFORM="${PLATFORM:-linux/$arch}"
if [ -z "${METHOD:-}" ]; then
  if command -v ctr >/dev/null; then METHOD=ctr; else METHOD=podman; fi
fi

[ "$(id -u)" = 0 ] || { echo "node-oneshot: run as root" >&2; exit 1; }
[ -d "$TARGET" ] || { echo "node-oneshot: $TARGET does not exist (mkdir -p it on the mounted network disk)" >&2; exit 1; }

# nix-seed refuses a target that is not a mount point unless --allow-non-mountpoint is
# given (in a pod, that means a forgotten volume). Here the target is usually a directory
# on the mounted disk, so check the same thing by hand: it must not be on the root
# filesystem, where the copy would fill the node's own disk.
fs=$(findmnt -n -o TARGET -T "$TARGET")
if [ "$fs" = / ]; then
  echo "node-oneshot: $TARGET is on the root filesystem, not on the network disk: is the disk mounted?" >&2
  exit 1
fi
echo "node-oneshot: target $TARGET is on $(findmnt -rn -o SOURCE,FSTYPE -T "$TARGET" || true), mounted at $fs"

case "$METHOD" in
  ctr)
    # containerd, in the kubelet's namespace (the image may already be there). For a
    # private registry add --user USER:PASSWORD (or --hosts-dir) to the pull.
    ns=k8s.io
    rootfs=$(mktemp -d /var/tmp/nix-seed-rootfs.XXXXXX)
    trap 'ctr -n "$ns" image unmount --rm "$rootfs" >/dev/null || true; rmdir "$rootfs" || true' EXIT
    ctr -n "$ns" image pull --platform "$PLATFORM" "$IMAGE"
    # A read-only view of the unpacked image (the kubelet unpacks images there too).
    ctr -n "$ns" image mount --platform "$PLATFORM" "$IMAGE" "$rootfs" >/dev/null
    ;;
  podman)
    podman pull --platform "$PLATFORM" "$IMAGE"
    rootfs=$(podman image mount "$IMAGE")
    trap 'podman image unmount "$IMAGE" >/dev/null || true' EXIT
    ;;
  *)
    echo "node-oneshot: METHOD must be ctr or podman" >&2
    exit 2
    ;;
esac

if [ -z "${NIX_SEED:-}" ]; then
  if [ -x "$rootfs/usr/local/bin/nix-seed" ] && [ ! -L "$rootfs/usr/local/bin/nix-seed" ]; then
    NIX_SEED="$rootfs/usr/local/bin/nix-seed"
  else
    NIX_SEED=nix-seed
  fi
fi

# The lock lease names this host; pods waiting for this seed will say so.
export NODE_NAME="${NODE_NAME:-$(hostname)}"
status=0
"$NIX_SEED" seed --source "$rootfs/nix" --target "$TARGET" --allow-non-mountpoint || status=$?
case "$status" in
  0) echo "node-oneshot: $TARGET holds $IMAGE's store paths" ;;
  3) echo "node-oneshot: another seeder held the lock too long (exit 3): run again" >&2 ;;
  *) echo "node-oneshot: nix-seed failed (exit $status)" >&2 ;;
esac
exit "$status"
