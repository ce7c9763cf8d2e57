#!/usr/bin/env bash
# Build a small but realistic Nix store with real Nix (Debian's nix-bin, 2.8)
# under ROOT/nix, for use as a test oracle / fixture by nix-seed.
#
#   scripts/make-real-store.sh [--force|--reuse] [--no-wal] ROOT [v1|v2|v3]
#
#   ROOT      directory that receives ROOT/nix/{store,var} (made absolute).
#   v1|v2     variant (default v1). v2 shares some store paths with v1 (same
#             derivations: seed-libc, seed-libb, seed-multi, seed-link,
#             seed-uses-tofile, the toFile text, the --add'ed file) and adds
#             new ones (seed-app-2.0, seed-single-file-v2.txt, seed-extra-2.0,
#             seed-top-2, a second toFile, a second --add'ed file, ...).
#             v3 is v2 with seed-app-3.0 and seed-top-3 (a new user environment).
#   --force   ROOT/nix already exists: delete it and rebuild from scratch.
#   --reuse   ROOT/nix already exists: build this variant on top of it (Nix
#             reuses valid paths; the profile gets a new generation).
#             Without --force/--reuse an existing ROOT/nix is refused (exit 2).
#   --no-wal  run Nix with `use-sqlite-wal = false` (rollback journal,
#             "truncate" mode, unix-dotfile locking) instead of WAL.
#             Env equivalents: NIX_SEED_WAL=0, NIX_SEED_FORCE=1, NIX_SEED_REUSE=1.
#
# Contents (per variant): a 3-derivation chain with runtime references
# (app -> libb -> libc; app also refers to itself), a two-output derivation
# (out, dev; dev refers to out), a single-file output, a symlink output, directory outputs with an executable
# script, nested dirs, empty file and relative symlinks, a builtins.toFile
# text, `nix-store --add` (recursive ca) and `--add-fixed` (flat ca) paths, a
# profile ROOT/nix/var/nix/profiles/default made by `nix-env -i`, direct GC
# roots under var/nix/gcroots, one dead (unrooted) build output, and finally
# `nix-store --optimise` so identical files are hardlinked via store/.links.
#
# Works offline: no nixpkgs, no substituters; builders use /bin/sh + coreutils.
# A chroot store (--store /abs/ROOT) always builds in the sandbox, so the host's
# /bin /usr /lib /lib64 are bind-mounted into it. Needs root (sandbox).
# See docs/notes/real-nix.md.
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&"$(( ${1:-2} == 0 ? 1 : 2 ))"; exit "${1:-2}"; }

force=${NIX_SEED_FORCE:-0}
reuse=${NIX_SEED_REUSE:-0}
wal=${NIX_SEED_WAL:-1}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --reuse) reuse=1 ;;
    --no-wal) wal=0 ;;
    --wal) wal=1 ;;
    -h|--help) usage 0 ;;
    -*) echo "make-real-store: unknown option $1" >&2; usage 2 ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ ${#args[@]} -ge 1 ] && [ ${#args[@]} -le 2 ] || usage 2
variant=${args[1]:-v1}
case "$variant" in v1|v2|v3) ;; *) echo "make-real-store: VARIANT must be v1, v2 or v3" >&2; exit 2 ;; esac
[ "$force" = 1 ] && [ "$reuse" = 1 ] && { echo "make-real-store: --force and --reuse exclude each other" >&2; exit 2; }

start=$(date +%s.%N)
mkdir -p "${args[0]}"
ROOT=$(cd "${args[0]}" && pwd -P)
[ "$ROOT" != / ] || { echo "make-real-store: refusing ROOT=/" >&2; exit 2; }

# --- real Nix -----------------------------------------------------------
if ! command -v nix-store >/dev/null 2>&1; then
  echo "make-real-store: installing nix-bin (Debian) ..." >&2
  # Another apt may be running: wait for the dpkg lock instead of failing.
  apt-get -o DPkg::Lock::Timeout=900 install -y nix-bin >&2 \
    || { apt-get -o DPkg::Lock::Timeout=900 update >&2 &&
         apt-get -o DPkg::Lock::Timeout=900 install -y nix-bin >&2; }
fi
for t in nix-store nix-env nix-instantiate sqlite3; do
  command -v "$t" >/dev/null 2>&1 || {
    [ "$t" = sqlite3 ] && apt-get -o DPkg::Lock::Timeout=900 install -y sqlite3 >&2
    command -v "$t" >/dev/null 2>&1 || { echo "make-real-store: $t not found" >&2; exit 1; }
  }
done

# --- existing ROOT/nix ----------------------------------------------------
DB=$ROOT/nix/var/nix/db/db.sqlite
if [ -e "$ROOT/nix" ]; then
  if [ "$force" = 1 ]; then
    chmod -R u+w "$ROOT/nix" 2>/dev/null || true   # store paths are read-only
    rm -rf "$ROOT/nix"
  elif [ "$reuse" = 1 ]; then
    # Nix with use-sqlite-wal=false (unix-dotfile VFS) cannot open a WAL-mode
    # DB ("unable to open database file"): switch it to a rollback journal.
    if [ "$wal" = 0 ] && [ -f "$DB" ]; then sqlite3 "$DB" 'pragma journal_mode=delete;' >/dev/null; fi
  else
    echo "make-real-store: $ROOT/nix already exists; use --force (rebuild) or --reuse (add on top)" >&2
    exit 2
  fi
fi

# --- Nix settings ---------------------------------------------------------
# substituters empty: offline. sandbox-paths: the chroot store forces the
# sandbox (even with sandbox = false), so /bin/sh and coreutils must be
# bind-mounted. build-users-group empty: no need for the nixbld group.
NIX_CONFIG="substituters =
sandbox-paths = /bin /usr /lib /lib64
build-users-group =
experimental-features = nix-command
keep-derivations = true
use-sqlite-wal = $([ "$wal" = 1 ] && echo true || echo false)"
export NIX_CONFIG
unset NIX_REMOTE NIX_PATH

work=$(mktemp -d "${TMPDIR:-/tmp}/make-real-store.XXXXXX")
trap 'rm -rf "$work"' EXIT
S=(--store "$ROOT")

# --- the expression -------------------------------------------------------
cat > "$work/store.nix" <<'NIX'
{ variant ? "v1" }:
let
  # v3 is v2 with a new app (and so a new profile user environment).
  v2 = variant != "v1";
  v3 = variant == "v3";
  base = {
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/bin:/usr/bin";
  };
  drv = name: script: attrs: derivation (base // { inherit name; args = [ "-c" script ]; } // attrs);
  # Same bytes in several outputs: `nix-store --optimise` hardlinks them.
  license = "Permission is hereby granted, free of charge (nix-seed test fixture).\n";

  # Chain with runtime references: app -> libb -> libc.
  libc = drv "seed-libc-1.0" ''
    mkdir -p $out/lib $out/share/doc
    echo "libc payload" > $out/lib/libc.txt
    printf '%s' "$license" > $out/share/doc/LICENSE
  '' { inherit license; };
  libb = drv "seed-libb-1.0" ''
    mkdir -p $out/lib $out/share/doc
    echo "libb links against $libc/lib/libc.txt" > $out/lib/libb.txt
    printf '%s' "$license" > $out/share/doc/LICENSE
  '' { inherit libc license; };
  app = drv "seed-app-${version}" ''
    mkdir -p $out/bin $out/etc $out/share/doc/app/deep/er
    cat > $out/bin/app <<EOS
    #!/bin/sh
    # uses $libb
    # self: $out/share/doc/app
    echo "seed-app $version"
    EOS
    chmod 755 $out/bin/app
    ln -s app $out/bin/app-alias
    ln -s ../share/doc/app $out/etc/docs
    echo "nested file" > $out/share/doc/app/deep/er/nested.txt
    : > $out/share/doc/app/empty
    printf '%s' "$license" > $out/share/doc/LICENSE
  '' { inherit libb license version; };
  version = if v3 then "3.0" else if v2 then "2.0" else "1.0";

  # Two outputs; dev refers to out.
  multi = drv "seed-multi-1.0" ''
    mkdir -p $out/lib $dev/include $dev/nix-support
    echo "shared object" > $out/lib/libmulti.so
    echo "#define MULTI 1" > $dev/include/multi.h
    echo "$out" > $dev/nix-support/propagated-out
  '' { outputs = [ "out" "dev" ]; };

  # Single regular file output.
  single = drv "seed-single-file${if v2 then "-v2" else ""}.txt" ''
    echo "single file output ${variant}" > $out
  '' { };

  # Symlink output (target inside libc: a reference).
  link = drv "seed-link" "ln -s $libc/lib/libc.txt $out" { inherit libc; };

  # builtins.toFile (ca "text:sha256:..."), used as a build input.
  greeting = builtins.toFile "seed-greeting.txt" "hello from builtins.toFile\n";
  usesToFile = drv "seed-uses-tofile" ''
    mkdir $out
    cp $greeting $out/greeting.txt
    echo $greeting > $out/ref
  '' { inherit greeting; };

  # v2 only: new derivation on top of a changed (app) and a shared (libc) one.
  greeting2 = builtins.toFile "seed-greeting-v2.txt" "v2 only toFile\n";
  extra = drv "seed-extra-2.0" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\nexec %s/bin/app "$@"\n# %s %s\n' $app $libc $greeting2 > $out/bin/extra
    chmod +x $out/bin/extra
  '' { inherit app libc greeting2; };

  # Never rooted: shows up in `nix-store --gc --print-dead`.
  garbage = drv "seed-garbage-${variant}" ''
    mkdir $out; printf '%s' "$license" > $out/LICENSE; echo dead > $out/dead
  '' { inherit license; };

  # What the profile installs: refers to everything above.
  top = drv "seed-top-${if v3 then "3" else if v2 then "2" else "1"}" ''
    mkdir -p $out/bin
    ln -s $app/bin/app $out/bin/app
    for p in $app $libb $libc $single $link $usesToFile $multiOut $multiDev $extra; do
      echo $p
    done > $out/closure.txt
  '' {
    inherit app libb libc single link usesToFile;
    multiOut = multi.out;
    multiDev = multi.dev;
    extra = if v2 then extra else "";
  };
in { inherit libc libb app multi single link usesToFile garbage top; }
   // (if v2 then { inherit extra; } else { })
NIX

inst() { nix-instantiate "${S[@]}" "$work/store.nix" --argstr variant "$variant" -A "$1" 2>/dev/null; }

# --- 1. builds --------------------------------------------------------------
# The profile build realises the whole closure of `top`; nix-env -i works
# offline (the user environment uses Nix's built-in builtin:buildenv).
nix-env "${S[@]}" -p "$ROOT/nix/var/nix/profiles/default" \
  -f "$work/store.nix" --argstr variant "$variant" -iA top >&2
# A direct GC root (symlink inside gcroots/ -> /nix/store/...).
app_drv=$(inst app)
nix-store "${S[@]}" -r "$app_drv" --add-root "$ROOT/nix/var/nix/gcroots/seed-app" >/dev/null
# Both outputs of the multi-output derivation, rooted.
multi_drv=$(inst multi)
nix-store "${S[@]}" -r "$multi_drv" --add-root "$ROOT/nix/var/nix/gcroots/seed-multi" >/dev/null
# Dead build output (no root).
nix-store "${S[@]}" -r "$(inst garbage)" >/dev/null 2>&1

# --- 2. paths added directly (ca column) ---------------------------------
mkdir -p "$work/add"
printf 'added with nix-store --add\n' > "$work/add/seed-added.txt"
added=$(nix-store "${S[@]}" --add "$work/add/seed-added.txt")               # fixed:r:sha256
mkdir -p "$work/add/seed-added-dir/sub"
printf 'Permission is hereby granted, free of charge (nix-seed test fixture).\n' > "$work/add/seed-added-dir/sub/LICENSE"
printf '#!/bin/sh\necho added\n' > "$work/add/seed-added-dir/run.sh"; chmod +x "$work/add/seed-added-dir/run.sh"
added_dir=$(nix-store "${S[@]}" --add "$work/add/seed-added-dir")           # recursive NAR ca
printf 'flat fixed-output %s\n' "$variant" > "$work/add/seed-flat-$variant.txt"
nix-store "${S[@]}" --add-fixed sha256 "$work/add/seed-flat-$variant.txt" >/dev/null  # fixed:sha256, left dead
if [ "$variant" = v2 ]; then
  printf 'added in v2 only\n' > "$work/add/seed-added-v2.txt"
  nix-store "${S[@]}" --add "$work/add/seed-added-v2.txt" > "$work/added-v2"
  ln -sfn "$(cat "$work/added-v2")" "$ROOT/nix/var/nix/gcroots/seed-added-v2"
fi
# Direct roots are plain symlinks to /nix/store/... inside var/nix/gcroots.
ln -sfn "$added" "$ROOT/nix/var/nix/gcroots/seed-added"
ln -sfn "$added_dir" "$ROOT/nix/var/nix/gcroots/seed-added-dir"

# --- 3. make var/nix relocatable to /nix ---------------------------------------
# With a chroot store Nix writes *host* paths into some symlinks:
#   gcroots/profiles -> ROOT/nix/var/nix/profiles
#   gcroots/auto/*   -> ROOT/nix/var/nix/profiles/default-N-link (nix-env),
#                       or temp dirs of nix-build (dangling).
# Point them at /nix/... as a normal install has them; drop dangling ones.
ln -sfn /nix/var/nix/profiles "$ROOT/nix/var/nix/gcroots/profiles"
for l in "$ROOT"/nix/var/nix/gcroots/auto/*; do
  [ -L "$l" ] || continue
  t=$(readlink "$l")
  case "$t" in
    "$ROOT"/nix/*) ln -sfn "${t#"$ROOT"}" "$l" ;;
    *) [ -e "$t" ] || rm -f "$l" ;;
  esac
done

# --- 4. hardlinks -------------------------------------------------------------
nix-store "${S[@]}" --optimise >&2

# --- 5. summary ---------------------------------------------------------------
nix-store "${S[@]}" --verify --check-contents >&2
valid=$(sqlite3 "$DB" 'select count(*) from ValidPaths;')
ca=$(sqlite3 "$DB" "select count(*) from ValidPaths where ca is not null and ca != '';")
drvs=$(sqlite3 "$DB" "select count(*) from ValidPaths where path like '%.drv';")
refs=$(sqlite3 "$DB" 'select count(*) from Refs;')
outs=$(sqlite3 "$DB" 'select count(*) from DerivationOutputs;')
links=$(find "$ROOT/nix/store/.links" -type f | wc -l)
shared=$(find "$ROOT/nix/store/.links" -type f -links +2 | wc -l)
jm=$(sqlite3 "$DB" 'pragma journal_mode;')
case "$(od -An -tu1 -j18 -N1 "$DB" | tr -d ' ')" in 2) hdr=wal ;; 1) hdr=rollback ;; *) hdr=unknown ;; esac
end=$(date +%s.%N)
echo "ROOT=$ROOT variant=$variant use-sqlite-wal=$([ "$wal" = 1 ] && echo true || echo false)"
echo "valid paths: $valid (drv: $drvs, with ca: $ca), refs: $refs, derivation outputs: $outs"
echo "store/.links: $links (shared by >=2 paths: $shared)"
files=
for f in "$DB"-*; do [ -e "$f" ] && files="$files${f##*/} "; done
# Nix's "truncate" mode is per connection: the file only says "rollback
# journal", so the sqlite3 CLI reports "delete"; Nix leaves a 0-byte
# db.sqlite-journal behind. WAL is persistent in the header.
[ "$hdr" = rollback ] && jm="$jm (Nix uses truncate per connection)"
echo "db journal mode: $jm; file header: $hdr; side files: ${files:-none}"
echo "profile: $(readlink "$ROOT/nix/var/nix/profiles/default") -> $(readlink "$ROOT/nix/var/nix/profiles/$(readlink "$ROOT/nix/var/nix/profiles/default")")"
awk -v a="$start" -v b="$end" 'BEGIN { printf "took: %.1fs\n", b - a }'
