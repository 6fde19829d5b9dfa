//! End to end with podman (as root): unionmount as the overlay driver's `mount_program`,
//! against a second storage where the same podman uses kernel overlayfs.
//!
//! Each storage is private (its own graphroot, runroot and libpod tmp_dir under a temp dir,
//! chosen by `CONTAINERS_STORAGE_CONF` and `CONTAINERS_CONF`). A minimal Debian rootfs
//! (debootstrap, cached as a tar) is imported into both; then `podman run` (output, a write),
//! and `podman build --layers` of a Containerfile whose RUN steps create, change and delete
//! files, replace a directory, chmod, symlink and hard link. The two builds are compared:
//! - `podman diff` of the image and of a container that changed things. With a mount program
//!   podman computes diffs by comparing trees ("naive diff"), which also lists every directory
//!   that contains a change; with the kernel it reads the upper ("native diff"), which does
//!   not. Both lists are compared after adding the ancestors of every entry to both. Naive
//!   diff also ignores a directory's mtime, so the container does not `touch` a directory.
//! - the layers of `podman save --format oci-dir`, applied in order as OCI layers (whiteouts
//!   delete, opaque markers clear) onto an empty directory: the trees after each layer must
//!   be equal entry by entry (type, mode, owner, content hash, link target, xattrs). The raw
//!   tars are not compared: naive diff writes a `.wh.NAME` for each deleted child where the
//!   kernel's upper has an opaque directory, leaves out copied-up directories whose attributes
//!   did not change, and kernel whiteouts share one inode (tar hard-link headers).
//! - the tree of `podman export` of a container of each image, entry by entry.
//!
//! Times are not compared (the builds run at different times), except that an entry the
//! kernel's build left with an mtime from before the builds must have the same mtime with
//! unionmount: a copy-up must not touch times (see `layers::assert_same`).
//!
//! Missing tools (podman, runc, debootstrap) are installed with apt-get; the test skips with
//! a printed reason (a failure when `CI` is set) if that is impossible, or without root or
//! /dev/fuse. Environment: `UNIONMOUNT_PODMAN_CACHE` is where the rootfs tar is kept (default
//! /var/tmp/unionmount-podman; delete the tar to rebuild it); `UNIONMOUNT_DEBIAN_MIRROR`
//! replaces http://deb.debian.org/debian for debootstrap. Takes about 1-2 minutes, plus about
//! a minute the first time (debootstrap) and whatever apt-get needs.

mod layers;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::{BIN, can_mount, output_within};
use crate::fixture::test_root;
use crate::mounted::skip;

/// Generous bound for one podman or apt-get command, to turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(600);

const BASE: &str = "localhost/unionmount-test-base";
const BUILT: &str = "localhost/unionmount-test-built";

/// Exercises creation, modification, deletion, directory replacement, rename of a lower
/// directory, chmod (setuid), chown, symlinks, hard links and a FIFO across three layers.
const CONTAINERFILE: &str = r#"FROM localhost/unionmount-test-base
RUN mkdir -p /data/keep /data/replace/sub /data/tree/a/b \
 && echo one > /data/keep/a && echo two > /data/replace/sub/b && echo gone > /data/gone \
 && ln -s keep/a /data/link && echo deep > /data/tree/a/b/f && mkfifo /data/fifo
RUN echo changed > /data/keep/a && rm /data/gone && rm -rf /data/replace && mkdir /data/replace \
 && echo new > /data/replace/c && chown 1:2 /data/replace/c && chmod 0751 /data/keep \
 && ln /data/keep/a /data/hard && rm -rf /usr/share/doc && rm /etc/issue \
 && mv /data/tree /data/moved && echo appended >> /etc/bash.bashrc
RUN ln -sf /etc/os-release /data/link && touch -d @1000000 /data/keep/a \
 && mkdir -p /usr/share/doc/new && chmod 4755 /data/hard && rm -rf /var/lib/apt/lists
"#;

/// One private podman storage; dropping it removes its containers, images and mounts.
struct Podman {
    name: &'static str,
    root: PathBuf,
}

impl Podman {
    /// Writes the configuration for a storage under `root`; with `mount_program`, the overlay
    /// driver runs it instead of mounting kernel overlayfs.
    fn new(root: PathBuf, name: &'static str, mount_program: Option<&str>) -> Podman {
        fs::create_dir_all(&root).unwrap();
        let mut storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
            root.display()
        );
        if let Some(prog) = mount_program {
            storage.push_str(&format!(
                "\n[storage.options.overlay]\nmount_program = \"{prog}\"\n"
            ));
        }
        fs::write(root.join("storage.conf"), storage).unwrap();
        // runc, as the brief's machines need; explicit ulimits because podman's defaults
        // (nproc raised to the maximum) are refused where the hard limit is lower.
        let containers = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\ntmp_dir = \"{}/libpod-tmp\"\n",
            root.display()
        );
        fs::write(root.join("containers.conf"), containers).unwrap();
        Podman { name, root }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.args(args)
            .env("CONTAINERS_STORAGE_CONF", self.root.join("storage.conf"))
            .env("CONTAINERS_CONF", self.root.join("containers.conf"));
        c
    }

    /// Runs podman with `args`; panics with its stderr unless it succeeds. Returns stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "[{}] podman {args:?} failed ({}):\n{}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn output(&self, args: &[&str]) -> Output {
        output_within(&mut self.command(args), LIMIT)
            .unwrap_or_else(|why| panic!("[{}] podman {args:?} {why}", self.name))
    }

    /// Mount points at or below this storage's directory, from mountinfo.
    fn mounts(&self) -> Vec<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| {
                PathBuf::from(
                    String::from_utf8_lossy(&unionmount::setup::unescape_octal(m)).into_owned(),
                )
            })
            .filter(|m| m.starts_with(&self.root))
            .collect()
    }

    /// Removes everything podman made; returns the mounts that were still there afterwards
    /// (and detaches them, so the temp dir can go).
    fn reset(&self) -> Vec<PathBuf> {
        let _ = self.output(&["rm", "--all", "--force"]);
        let _ = self.output(&["system", "reset", "--force"]);
        let left = self.mounts();
        for m in left.iter().rev() {
            crate::mounted::detach(m);
        }
        left
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if !self.root.join("graph").exists() {
            return;
        }
        let left = self.reset();
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "[{}] mounts left after podman system reset: {left:?}",
                self.name
            );
        }
    }
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

/// Debian's archive key, which debootstrap needs to check what it downloads.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Makes sure podman and runc are installed, and debootstrap with Debian's archive key when
/// the rootfs is not cached yet; with apt-get if needed. False (after saying why) if they
/// cannot be.
fn ensure_tools() -> bool {
    let mut missing: Vec<&str> = ["podman", "runc"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if !rootfs_cache().is_file() {
        if !on_path("debootstrap") {
            missing.push("debootstrap");
        }
        if !Path::new(DEBIAN_KEYRING).is_file() {
            missing.push("debian-archive-keyring");
        }
    }
    if missing.is_empty() {
        return true;
    }
    if !on_path("apt-get") {
        skip(&format!(
            "{missing:?} missing and no apt-get to install them"
        ));
        return false;
    }
    eprintln!("podman test: installing {missing:?} with apt-get");
    for args in [
        &["update"][..],
        &["install", "-y", "--no-install-recommends"][..],
    ] {
        let args: Vec<&str> = if args[0] == "install" {
            args.iter().chain(&missing).copied().collect()
        } else {
            args.to_vec()
        };
        let out = output_within(
            Command::new("apt-get")
                .args(&args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            LIMIT,
        );
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                skip(&format!(
                    "apt-get {args:?} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
                return false;
            }
            Err(why) => {
                skip(&format!("apt-get {args:?} {why}"));
                return false;
            }
        }
    }
    true
}

/// Where the rootfs tar is cached.
fn rootfs_cache() -> PathBuf {
    std::env::var_os("UNIONMOUNT_PODMAN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/unionmount-podman"))
        .join("bookworm-minbase.tar")
}

/// The cached minimal Debian rootfs as a tar, made with debootstrap when missing. An
/// exclusive lock on the cache directory keeps two runs from building it at once.
fn base_rootfs_tar() -> PathBuf {
    let tar = rootfs_cache();
    let cache = tar.parent().unwrap();
    fs::create_dir_all(cache).unwrap();
    let lock = fs::File::open(cache).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    if tar.is_file() {
        return tar;
    }
    let mirror = std::env::var("UNIONMOUNT_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let tree = cache.join(format!("rootfs.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tree);
    let started = Instant::now();
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args(["--variant=minbase", "bookworm"])
        .arg(&tree)
        .arg(&mirror);
    let out =
        output_within(&mut debootstrap, LIMIT).unwrap_or_else(|why| panic!("debootstrap {why}"));
    assert!(
        out.status.success(),
        "debootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let partial = cache.join(format!("bookworm-minbase.tar.{}", std::process::id()));
    let out = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&partial, &tar).unwrap();
    fs::remove_dir_all(&tree).unwrap();
    eprintln!("podman test: debootstrap took {:?}", started.elapsed());
    tar
}

/// What one storage produced, for comparison.
struct Results {
    image_diff: BTreeSet<String>,
    container_diff: BTreeSet<String>,
    /// The tree after each layer of the built image (its base layer first).
    layers: Vec<layers::Tree>,
    export: layers::Tree,
}

/// Imports, runs, builds and exports with one storage; `work` is a scratch directory.
fn exercise(p: &Podman, base_tar: &Path, work: &Path, root_fs_type: &str) -> Results {
    let t = Instant::now();
    p.run(&["import", "--quiet", base_tar.to_str().unwrap(), BASE]);
    eprintln!("[{}] import: {:?}", p.name, t.elapsed());

    let t = Instant::now();
    let out = p.run(&[
        "run", "--rm", "--network", "none", BASE, "sh", "-c",
        "echo hello from $(cat /etc/debian_version | cut -c1-2); echo data > /root/f && cat /root/f; \
         grep ' / / ' /proc/self/mountinfo",
    ]);
    eprintln!("[{}] run: {:?}", p.name, t.elapsed());
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello from 12"), "[{}] {out}", p.name);
    assert_eq!(lines.next(), Some("data"), "[{}] {out}", p.name);
    let root = lines.next().unwrap_or("");
    assert!(
        root.contains(&format!(" - {root_fs_type} ")),
        "[{}] the container's / is not {root_fs_type}: {root}",
        p.name
    );

    let ctx = work.join("context");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Containerfile"), CONTAINERFILE).unwrap();
    let t = Instant::now();
    p.run(&[
        "build",
        "--quiet",
        "--layers",
        "--network",
        "none",
        "-t",
        BUILT,
        "-f",
        ctx.join("Containerfile").to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    eprintln!("[{}] build: {:?}", p.name, t.elapsed());

    let image_diff = normalized_diff(&p.run(&["diff", BUILT]));
    p.run(&[
        "run",
        "--name",
        "changed",
        "--network",
        "none",
        BUILT,
        "sh",
        "-c",
        "rm /data/link && echo more >> /data/hard && mkdir /new && rm -rf /data/moved \
         && chmod 700 /data/replace",
    ]);
    let container_diff = normalized_diff(&p.run(&["diff", "changed"]));
    p.run(&["rm", "changed"]);

    let t = Instant::now();
    let oci = work.join("oci");
    p.run(&[
        "save",
        "--quiet",
        "--format",
        "oci-dir",
        "-o",
        oci.to_str().unwrap(),
        BUILT,
    ]);
    let layers = layers::apply_all(&oci, &work.join("applied"));
    eprintln!(
        "[{}] save and apply {} layers: {:?}",
        p.name,
        layers.len(),
        t.elapsed()
    );

    let t = Instant::now();
    p.run(&["create", "--name", "exported", BUILT, "true"]);
    let tar = work.join("export.tar");
    p.run(&["export", "-o", tar.to_str().unwrap(), "exported"]);
    p.run(&["rm", "exported"]);
    let export = layers::extract_tree(&tar, &work.join("export"));
    eprintln!("[{}] export: {:?}", p.name, t.elapsed());
    Results {
        image_diff,
        container_diff,
        layers,
        export,
    }
}

/// `podman diff` output as a set, with every ancestor of an entry added as changed (see the
/// module docs for why).
fn normalized_diff(out: &str) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = out.lines().map(str::to_owned).collect();
    let paths: Vec<String> = set
        .iter()
        .filter_map(|l| l.get(2..))
        .map(str::to_owned)
        .collect();
    let listed: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    for p in &paths {
        let mut a = Path::new(p).parent();
        while let Some(dir) = a.filter(|d| *d != Path::new("/")) {
            let d = dir.to_str().unwrap();
            if !listed.contains(d) {
                set.insert(format!("C {d}"));
            }
            a = dir.parent();
        }
    }
    set
}

#[test]
fn podman_with_unionmount_matches_kernel_overlayfs() {
    if !can_mount() || !crate::mounted::overlay_available() || !ensure_tools() {
        return;
    }
    let started = Instant::now();
    let base_tar = base_rootfs_tar();
    let tmp = tempfile::Builder::new()
        .prefix("um-podman")
        .tempdir_in(test_root())
        .unwrap();
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let um = Podman::new(tmp.path().join("unionmount"), "unionmount", Some(BIN));
    let info = um.run(&["info", "--format", "{{json .Store.GraphOptions}}"]);
    assert!(
        info.contains("overlay.mount_program") && info.contains(BIN),
        "podman does not use unionmount as its mount program: {info}"
    );
    let ours = exercise(&um, &base_tar, &tmp.path().join("um-work"), "fuse");
    let left = um.reset();
    assert!(
        left.is_empty(),
        "unionmount mounts left after reset: {left:?}"
    );
    drop(um);

    let kernel = Podman::new(tmp.path().join("kernel"), "kernel", None);
    let theirs = exercise(
        &kernel,
        &base_tar,
        &tmp.path().join("kernel-work"),
        "overlay",
    );
    let left = kernel.reset();
    assert!(
        left.is_empty(),
        "kernel overlay mounts left after reset: {left:?}"
    );
    drop(kernel);

    assert_eq!(
        ours.image_diff, theirs.image_diff,
        "podman diff of the image"
    );
    assert_eq!(
        ours.container_diff, theirs.container_diff,
        "podman diff of a container"
    );
    assert!(
        ours.container_diff.contains("D /data/moved"),
        "{:?}",
        ours.container_diff
    );
    assert_eq!(ours.layers.len(), theirs.layers.len(), "number of layers");
    for (i, (a, b)) in ours.layers.iter().zip(&theirs.layers).enumerate() {
        layers::assert_same(a, b, since, &format!("tree after layer {i}"));
    }
    layers::assert_same(&ours.export, &theirs.export, since, "podman export");
    layers::assert_built_content(&ours.export);
    eprintln!("podman test: {:?} in all", started.elapsed());
}
