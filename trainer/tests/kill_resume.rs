//! Kill and resume, with real processes: a `trainer train` run is killed with SIGKILL again and
//! again — at random moments and the instant a checkpoint write is under way — and resumed each
//! time, until it finishes. Its checkpoint (parameters, EMA, optimiser moments, RNG, step), its
//! exported model and its loss.csv must then equal, bit for bit, those of a run of the same length
//! that was never interrupted, and after every kill `checkpoint.safetensors` must be whole
//! (a complete safetensors file with the trainer's metadata) or absent.

use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Long enough that the kills below (at most 12, each after 2–12% of an uninterrupted run's
/// time, or at the next checkpoint write) land before the run ends: with 40 steps and kills
/// after 5–35%, a run sometimes finished after 4 kills (CI, seventeenth session).
const STEPS: &str = "120";

fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowmap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small lsd run whose checkpoint (4 groups of a 200k-parameter MLP, 3.3 MB) takes about as
/// long to write as a step takes to run, written after every step.
fn config(dir: &Path) -> PathBuf {
    let p = dir.join("run.toml");
    std::fs::write(
        &p,
        r#"objective = "lsd"
batch = 16
lr = 1e-3
warmup = 5
optimizer = "radam"
checkpoint_every = 1
log_every = 1
[data]
name = "checkerboard"
[model]
arch = "mlp"
dim = 2
width = 256
depth = 4
activation = "gelu"
conditioning = "raw"
"#,
    )
    .unwrap();
    p
}

fn start(args: &[&str]) -> Child {
    trainer().args(args).spawn().expect("starting the trainer")
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `.tmp` files in `dir`; none when a run was killed before it created `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect()
}

fn checkpoint_being_written(dir: &Path) -> bool {
    temp_files(dir).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".checkpoint.safetensors."))
    })
}

/// The checkpoint's metadata and tensors; panics if the file is not whole.
fn read_checkpoint(path: &Path) -> (String, Vec<(String, Vec<u8>)>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .unwrap_or_else(|e| panic!("{} is not whole: {e}", path.display()));
    let meta = header.metadata().as_ref().unwrap()["flowmap-trainer"].clone();
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not whole: {e}", path.display()));
    let mut tensors: Vec<(String, Vec<u8>)> = st
        .iter()
        .map(|(n, v)| (n.to_string(), v.data().to_vec()))
        .collect();
    tensors.sort();
    (meta, tensors)
}

/// loss.csv without its last column (samples/s, a wall-clock rate).
fn log_rows(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("loss.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(a, _)| a).to_string())
        .collect()
}

#[test]
fn a_run_killed_at_any_moment_resumes_to_the_same_bits() {
    let root = temp_dir("kill-resume");
    let cfg = config(&root);
    let cfg = cfg.to_str().unwrap();
    let (straight, killed) = (root.join("straight"), root.join("killed"));
    let (s, k) = (straight.to_str().unwrap(), killed.to_str().unwrap());

    let t0 = Instant::now();
    finish(
        start(&[
            "train", "--config", cfg, "--out", s, "--steps", STEPS, "--quiet",
        ]),
        "the uninterrupted run",
    );
    let straight_secs = t0.elapsed().as_secs_f64();

    // A cheap deterministic sequence of kill delays within the run's length.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next_delay = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Duration::from_secs_f64(straight_secs * (0.02 + 0.1 * (state % 1000) as f64 / 1000.0))
    };

    let (mut kills, mut mid_write, mut fresh) = (0, 0, true);
    loop {
        let mut child = if fresh {
            start(&[
                "train", "--config", cfg, "--out", k, "--steps", STEPS, "--quiet",
            ])
        } else {
            start(&["train", "--resume", k, "--quiet"])
        };
        // Odd kills wait for a checkpoint write to be under way; even ones come at a random time.
        let wait_for_write = kills % 2 == 1;
        let deadline = Instant::now() + next_delay();
        let exited = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            let writing = wait_for_write && checkpoint_being_written(&killed);
            if writing || (!wait_for_write && Instant::now() >= deadline) {
                break false;
            }
            if wait_for_write && Instant::now() >= deadline + Duration::from_secs(30) {
                panic!("no checkpoint write was seen in 30 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        if exited || kills >= 12 {
            finish(child, "the last resume");
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if checkpoint_being_written(&killed) {
            mid_write += 1;
        }
        let ckpt = killed.join("checkpoint.safetensors");
        if ckpt.exists() {
            read_checkpoint(&ckpt);
            fresh = false;
        }
    }
    eprintln!("{kills} kills, {mid_write} during a checkpoint write");
    assert!(kills >= 6, "only {kills} kills landed before the run ended");
    assert!(mid_write >= 1, "no kill landed during a checkpoint write");
    assert!(
        temp_files(&killed).is_empty(),
        "temporary files were left behind: {:?}",
        temp_files(&killed)
    );

    let (a, b) = (
        read_checkpoint(&straight.join("checkpoint.safetensors")),
        read_checkpoint(&killed.join("checkpoint.safetensors")),
    );
    assert_eq!(a.0, b.0, "checkpoint metadata (config, step, RNG) differs");
    assert_eq!(a.1.len(), b.1.len());
    for ((name, x), (_, y)) in a.1.iter().zip(&b.1) {
        assert!(x == y, "{name} differs after {kills} kills");
    }
    let model = |d: &Path| flowmap::weights::Weights::read(&d.join("model.safetensors")).unwrap();
    let (ma, mb) = (model(&straight), model(&killed));
    for (name, t) in &ma.tensors {
        assert!(t.data == mb.tensors[name].data, "exported {name} differs");
    }
    assert_eq!(log_rows(&straight), log_rows(&killed), "loss.csv differs");
}
