//! End-to-end benchmarks: the same workloads on kernel overlayfs, unionmount and fuse-overlayfs
//! over the same layers, in one run. Prints, per workload, the median wall time of each
//! implementation and its ratio to kernel overlayfs, then each daemon's peak RSS.
//!
//! Run as root with fuse-overlayfs, debootstrap and fio installed:
//! `cargo bench --bench union` (see README, "Benchmarks"). Environment:
//! - `UNIONMOUNT_BENCH_DIR`: where the layers are built once and kept
//!   (default /var/tmp/unionmount-bench; delete it to rebuild);
//! - `UNIONMOUNT_BENCH_RUNS`: runs per workload and implementation (default 3, median shown);
//! - `UNIONMOUNT_BENCH_ONLY`: comma-separated workload names to run;
//! - `UNIONMOUNT_BENCH_IMPLS`: comma-separated subset of `kernel,unionmount,fuse-overlayfs`
//!   (and `unionmount-variant`);
//! - `UNIONMOUNT_BENCH_VARIANT=OPTS`: also run unionmount with `-o OPTS` (column
//!   `unionmount-variant`), e.g. `spin=0`, to measure an option against the defaults;
//! - `UNIONMOUNT_BENCH_SMALL=1`: small layers without debootstrap, to check the harness quickly.
//!
//! Lowers are shared by the three (they are read-only; each run has its own upper and
//! workdir). Cold workloads sync and drop the caches first, so they include the lowers' disk
//! reads; warm ones do not.

mod layers;
mod mounts;
mod workloads;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mounts::Impl;

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
}

fn drop_caches() {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (run as root)");
}

fn fresh_dir(p: &Path) {
    if p.exists() {
        std::fs::remove_dir_all(p).unwrap();
    }
    std::fs::create_dir_all(p).unwrap();
}

/// One timed run of `w` on `imp`: returns the time and the daemon's peak RSS in KiB.
fn run_once(
    imp: Impl,
    w: &workloads::Workload,
    l: &layers::Layers,
    scratch: &Path,
) -> (Duration, Option<u64>) {
    let (upper, work, mnt) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("mnt"),
    );
    for d in [&upper, &work] {
        fresh_dir(d);
    }
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mounts::mount(
        imp,
        Path::new(env!("CARGO_BIN_EXE_unionmount")),
        &l.lowers,
        &upper,
        &work,
        &mnt,
    );
    (w.prepare)(&m.mnt, l);
    if w.cold {
        drop_caches();
    }
    let t = Instant::now();
    (w.run)(&m.mnt, l);
    let elapsed = t.elapsed();
    let rss = m.peak_rss_kib();
    m.unmount();
    (elapsed, rss)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if std::env::args().skip(1).any(|a| a != "--bench") {
        eprintln!(
            "usage: cargo bench --bench union (options are environment variables, see benches/union/main.rs)"
        );
        std::process::exit(2);
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("the benchmarks mount kernel overlayfs and drop caches: run them as root");
        std::process::exit(1);
    }
    let dir = PathBuf::from(
        std::env::var("UNIONMOUNT_BENCH_DIR")
            .unwrap_or_else(|_| "/var/tmp/unionmount-bench".into()),
    );
    let small = std::env::var_os("UNIONMOUNT_BENCH_SMALL").is_some();
    let runs: usize = std::env::var("UNIONMOUNT_BENCH_RUNS")
        .ok()
        .map(|v| v.parse().expect("UNIONMOUNT_BENCH_RUNS is a number"))
        .unwrap_or(3);
    let only = env_list("UNIONMOUNT_BENCH_ONLY");
    let impls: Vec<Impl> = match env_list("UNIONMOUNT_BENCH_IMPLS") {
        Some(names) => Impl::all()
            .into_iter()
            .filter(|i| names.iter().any(|n| n == i.name()))
            .collect(),
        None => Impl::all(),
    };
    let l = layers::build(&dir, small);
    let scratch = dir.join("scratch");

    println!(
        "unionmount benchmarks: {} CPUs, kernel {}, {} runs each (median), {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rustix::system::uname().release().to_string_lossy(),
        runs,
        if small { "SMALL layers" } else { "full layers" },
    );
    print!("{:<20}", "workload");
    for i in &impls {
        print!("{:>20}", i.name());
    }
    // Ratios only when kernel overlayfs ran (it is first in `Impl::all()`).
    let ratios = impls.first() == Some(&Impl::Kernel);
    for i in impls.iter().skip(1).filter(|_| ratios) {
        print!("{:>20}", format!("{}/kernel", short(*i)));
    }
    println!();
    let mut peak: Vec<u64> = vec![0; impls.len()];
    for w in workloads::all() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == w.name))
        {
            continue;
        }
        if w.needs_rootfs && !l.real_rootfs {
            continue;
        }
        // Runs rotate which implementation goes first: the first cold read of a lower file
        // also pays for the host's disk cache, which would otherwise always bill the same one.
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); impls.len()];
        for run in 0..runs {
            for k in (0..impls.len()).map(|k| (k + run) % impls.len()) {
                let imp = impls[k];
                let (t, rss) = run_once(imp, &w, &l, &scratch.join(imp.name()));
                times[k].push(t);
                peak[k] = peak[k].max(rss.unwrap_or(0));
            }
        }
        let medians: Vec<Duration> = times.into_iter().map(median).collect();
        print!("{:<20}", w.name);
        for m in &medians {
            print!("{:>19.3}s", m.as_secs_f64());
        }
        if ratios {
            for m in medians.iter().skip(1) {
                print!("{:>19.2}x", m.as_secs_f64() / medians[0].as_secs_f64());
            }
        }
        println!();
    }
    print!("{:<20}", "peak RSS (MiB)");
    for (k, i) in impls.iter().enumerate() {
        match i {
            Impl::Kernel => print!("{:>20}", "-"),
            _ => print!("{:>20.1}", peak[k] as f64 / 1024.0),
        }
    }
    println!();
}

fn short(i: Impl) -> &'static str {
    match i {
        Impl::Kernel => "kernel",
        Impl::Unionmount => "um",
        Impl::Variant => "um-var",
        Impl::FuseOverlayfs => "fo",
    }
}
