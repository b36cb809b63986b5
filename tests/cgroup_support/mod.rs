//! Shared by the cgroup integration tests: a scratch parent per test (a child of the cgroup
//! this test process is in, in every hierarchy), a guard that kills and removes everything a
//! test created even when it fails, and the tier checks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calyx::cgroup::detect::Hierarchy;
use calyx::cgroup::{
    CgroupMode, CreateOptions, InternalProcessPolicy, Layout, LimitSpec, RunCgroup, v2,
};
use calyx::sys::cgroup_sys;

/// True inside the VM tier (pure cgroup v2 expected).
pub fn in_vm() -> bool {
    std::env::var_os("CALYX_VM_KERNEL").is_some()
}

/// True when CI declared itself.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The host's layout, with the tier's expectation asserted: the VM is unified; this host
/// tier is hybrid (or legacy). A host that is neither what it should be fails loudly.
pub fn host_layout() -> Layout {
    let layout = Layout::discover(Path::new("/"), None).expect("discover cgroups");
    if in_vm() {
        assert_eq!(
            layout.mode,
            CgroupMode::Unified,
            "VM tier must run on pure cgroup v2"
        );
    }
    layout
}

/// A scratch parent in every hierarchy, removed on drop.
pub struct Scratch {
    pub layout: Layout,
    dirs: Vec<PathBuf>,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let host = host_layout();
        let name = format!("cxtest-{}-{tag}", std::process::id());
        let mut dirs = Vec::new();
        let mut mk = |parent: &Path| -> PathBuf {
            let d = parent.join(&name);
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            dirs.push(d.clone());
            d
        };
        let v1: Vec<Hierarchy> = host
            .v1
            .iter()
            .map(|h| Hierarchy {
                controllers: h.controllers.clone(),
                dir: mk(&h.dir),
            })
            .collect();
        let v2 = host.v2.as_deref().and_then(|parent| {
            let uid = cgroup_sys::effective_uid();
            if v2::check_delegation(parent, uid, cgroup_sys::effective_gid()).is_err() {
                return None;
            }
            if host.mode == CgroupMode::Unified {
                // The same step calyx-run takes: controllers for the children of our cgroup.
                let state = v2::parent_state(parent).unwrap();
                let want: Vec<&str> = ["memory", "pids", "cpu", "io"]
                    .into_iter()
                    .filter(|c| state.available.iter().any(|a| a == c))
                    .collect();
                let plan = v2::plan_enable(
                    &want,
                    parent,
                    &state,
                    std::process::id(),
                    InternalProcessPolicy::Refuse,
                )
                .unwrap();
                v2::apply_enable(parent, &plan).unwrap();
            }
            Some(mk(parent))
        });
        let layout = Layout {
            root: host.root.clone(),
            mode: host.mode,
            v2,
            v1,
        };
        Self { layout, dirs }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for d in &self.dirs {
            // Leftover run cgroups first (a failed test), then the scratch parent itself.
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(d);
        }
        for d in &self.dirs {
            if !std::thread::panicking() {
                assert!(!d.exists(), "left behind: {}", d.display());
            }
        }
    }
}

/// A run cgroup and the children a test started, killed and removed on drop.
pub struct Run {
    pub cg: Arc<RunCgroup>,
    pub children: Vec<Child>,
}

impl Run {
    pub fn create(layout: &Layout, id: &str, limits: &LimitSpec) -> Self {
        let opts = CreateOptions {
            run_id: id,
            limits,
            internal: InternalProcessPolicy::Refuse,
            uid: cgroup_sys::effective_uid(),
            gid: cgroup_sys::effective_gid(),
            page_size: cgroup_sys::page_size(),
        };
        let cg = RunCgroup::create(layout, &opts).unwrap_or_else(|e| panic!("create {id}: {e}"));
        Self {
            cg: Arc::new(cg),
            children: Vec::new(),
        }
    }

    /// Spawn `argv` gated on stdin (the script reads one line first), place it in the
    /// cgroup, then release it: nothing runs outside the cgroup.
    pub fn spawn_placed(&mut self, argv: &[&str]) -> u32 {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {argv:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        self.cg
            .add_pid(pid)
            .unwrap_or_else(|e| panic!("placing {pid} ({}): {e}", argv[0]));
        pid
    }

    pub fn release(&mut self) {
        use std::io::Write;
        for c in &mut self.children {
            if let Some(mut stdin) = c.stdin.take() {
                let _ = stdin.write_all(b"go\n");
            }
        }
    }

    /// Wait for child `i` to end; `None` if it does not within `limit`.
    pub fn wait(&mut self, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.children[i].try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Wait until the cgroup holds no process.
    pub fn wait_empty(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if !self.cg.populated().unwrap() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Every directory of the run cgroup.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut d: Vec<PathBuf> = self.cg.v2_dir().map(Path::to_owned).into_iter().collect();
        for c in ["memory", "pids", "cpu", "cpuacct", "blkio", "freezer"] {
            if let Some(p) = self.cg.v1_dir(c).filter(|p| !d.iter().any(|x| x == p)) {
                d.push(p.to_owned());
            }
        }
        d
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        let pid = self.children.first().map(Child::id);
        let _ = self.cg.kill(pid);
        for c in &mut self.children {
            let _ = c.wait();
        }
        // The test may already have removed the cgroup: then there is nothing to wait for.
        let end = Instant::now() + Duration::from_secs(2);
        while self.cg.populated().unwrap_or(false) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.cg.remove();
    }
}
