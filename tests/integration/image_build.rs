//! The image's builder stage, replayed without a Docker engine (issue #27:
//! the image did not build, and nothing noticed because no image was ever
//! built here).
//!
//! The build context is assembled in a temporary directory as `.dockerignore`
//! admits it, with Docker's own matching rules; then the builder stage's
//! WORKDIR, COPY and RUN instructions run in order against it, the two
//! `cargo build --release --locked` steps included, so a new step or a
//! changed COPY is followed without touching this file. Last, every file a
//! later stage takes from the context or from the builder must exist, and the
//! binary the image's ENTRYPOINT runs must be the real program.
//!
//! Not replayed, and why:
//! - the base image and the RUN steps before the stage's first COPY: they
//!   provision the toolchain, cannot see the context, and are what this
//!   machine needs anyway to build the project;
//! - the other stages: what they take from the context and the builder is
//!   checked here; their shape is checked by `deployment.rs` (hadolint).
//!
//! An instruction this replay does not know fails the test, naming it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use regex::Regex;

use crate::common::children::spawn_bound_to_process;

/// The builder's cargo target directory, one per machine and kept between
/// runs (what BuildKit's layer cache is to `docker build`): the worktrees and
/// CI on a machine pay for one cold build between them. Never the tests' own
/// target directory: the stub step builds a binary named `orderflow` too,
/// and the other tests run the one in `debug/`.
const BUILDER_CACHE: &str = "/var/tmp/orderflow-image-build";

/// The release profile for the replayed builds: the test checks the context
/// and the steps, not the optimiser, and a cold optimised build with thin LTO
/// takes far longer on CI's two cores. Same dependencies and features, same
/// commands; only code generation is cheaper.
const RELEASE_PROFILE_OVERRIDES: &[(&str, &str)] = &[
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0"),
    ("CARGO_PROFILE_RELEASE_LTO", "false"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "256"),
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    ("CARGO_PROFILE_RELEASE_INCREMENTAL", "false"),
];

#[test]
fn the_builder_stage_builds_the_binary_from_the_dockerignore_context() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile =
        Dockerfile::parse(&read(&root.join("Dockerfile"))).unwrap_or_else(|e| panic!("{e}"));
    let ignore = DockerIgnore::parse(&read(&root.join(".dockerignore")))
        .unwrap_or_else(|e| panic!(".dockerignore: {e}"));

    let scratch = tempfile::Builder::new()
        .prefix("orderflow-image-build-")
        .tempdir()
        .expect("temp dir");
    let context = scratch.path().join("context");
    let admitted = assemble_context(root, &context, &ignore).expect("assemble the build context");
    println!(
        "build context: {} files admitted by .dockerignore: {}",
        admitted.len(),
        summarise(&admitted)
    );

    let cache = Path::new(BUILDER_CACHE);
    fs::create_dir_all(cache).expect("builder cache dir");
    // Held until the binary has been checked: another run's stub step would
    // replace target/release/orderflow under this one.
    let lock = fs::File::create(cache.join("replay.lock")).expect("lock file");
    lock.lock().expect("lock the builder cache");
    let rootfs = scratch.path().join("rootfs");
    fs::create_dir_all(&rootfs).expect("rootfs");
    let builder = dockerfile
        .stage("builder")
        .unwrap_or_else(|e| panic!("{e}"));
    replay(builder, &context, &rootfs, cache).unwrap_or_else(|e| panic!("{e}"));

    let runtime = dockerfile.stages.last().expect("a final stage");
    assert!(
        runtime.name.as_deref() != Some("builder"),
        "the final stage is the builder: nothing for the image to run"
    );
    let image =
        ImageView::collect(&dockerfile, &context, &rootfs).unwrap_or_else(|e| panic!("{e}"));
    let program = runtime_program(runtime).unwrap_or_else(|e| panic!("{e}"));
    let binary = image.binary(&program).unwrap_or_else(|e| panic!("{e}"));

    let version = run_checked(
        Command::new(&binary).arg("--version").env_clear(),
        "--version",
    );
    let expected = format!("orderflow {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        version.trim(),
        expected,
        "{} is not the real program (the stub of the dependency step, left fresh?)",
        binary.display()
    );
    // In the image's own environment, ORDERFLOW_CONFIG names the baked-in
    // config.toml, and a config file that is missing or does not parse
    // stops the program: it loads the config the image ships.
    let mut config = Command::new(&binary);
    config.arg("config").env_clear().current_dir(scratch.path());
    for (key, value) in image.env() {
        println!("image environment: {key}={value}");
        config.env(key, value);
    }
    let shown = run_checked(&mut config, "config");
    assert!(
        shown.contains("[KafkaConfiguration]"),
        "`orderflow config` in the image's environment printed no configuration:\n{shown}"
    );
}

/// Docker's matching, on patterns whose meaning Docker documents, so that a
/// `.dockerignore` rule means here what it means to `docker build`.
#[test]
fn dockerignore_patterns_match_as_docker_matches_them() {
    let ignore = DockerIgnore::parse(
        "\u{feff}# comment\n\
         target/\n\
         **/node_modules/\n\
         /*.db\n\
         */temp*\n\
         temp?\n\
         **/*.swp\n\
         *.md\n\
         !README*.md\n\
         README-secret.md\n\
         docs/**\n\
         !docs/keep.txt\n\
         a/./b/../c\n",
    )
    .expect("parse");
    let excluded = |path: &str| ignore.excludes(path);
    // A directory pattern excludes everything below it; patterns are
    // anchored at the context root (unlike .gitignore).
    assert!(excluded("target"));
    assert!(excluded("target/release/orderflow"));
    assert!(!excluded("src/target.rs"));
    assert!(!excluded("sub/target/x"));
    // `**` spans any number of directories, none included.
    assert!(excluded("node_modules/x.js"));
    assert!(excluded("tests/browser/node_modules/a/b.js"));
    assert!(excluded("x.swp") && excluded("a/b/x.swp"));
    // A leading slash is the context root; `*` never crosses a slash.
    assert!(excluded("orders.db"));
    assert!(!excluded("data/orders.db"));
    assert!(excluded("somedir/temporary.txt") && excluded("somedir/temp"));
    assert!(!excluded("temp.txt") && !excluded("a/b/temp"));
    assert!(excluded("tempa") && !excluded("temp") && !excluded("tempab"));
    // The last matching line wins, exceptions included.
    assert!(excluded("ARCHITECTURE.md"));
    assert!(!excluded("README.md") && !excluded("README-dev.md"));
    assert!(excluded("README-secret.md"));
    assert!(excluded("docs/a.txt") && !excluded("docs/keep.txt"));
    // Patterns are cleaned as paths (Go's filepath.Clean).
    assert!(excluded("a/c") && excluded("a/c/d"));
    assert!(!excluded("src/main.rs") && !excluded("Cargo.toml"));

    assert!(
        DockerIgnore::parse("!\n").is_err(),
        "a lone `!` is an error to Docker"
    );
}

/// The replay's COPY follows Docker's rules for where sources land.
#[test]
fn copy_places_files_and_directory_contents_as_docker_does() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let context = scratch.path().join("context");
    let rootfs = scratch.path().join("rootfs");
    for (path, text) in [
        ("Cargo.toml", "t"),
        ("Cargo.lock", "l"),
        ("src/main.rs", "m"),
        ("src/api/admin.html", "h"),
        ("config.toml", "c"),
    ] {
        let file = context.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, text).unwrap();
    }
    let copy = |args: &[&str], workdir: &str| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        copy_from_context(&context, &rootfs, workdir, &args)
    };
    copy(&["Cargo.toml", "Cargo.lock", "./"], "/build").unwrap();
    copy(&["src", "./src"], "/build").unwrap();
    copy(&["config.toml", "/etc/orderflow/config.toml"], "/build").unwrap();
    copy(&["*.toml", "/glob/"], "/").unwrap();
    for (path, text) in [
        ("build/Cargo.toml", "t"),
        ("build/Cargo.lock", "l"),
        ("build/src/main.rs", "m"),
        ("build/src/api/admin.html", "h"),
        ("etc/orderflow/config.toml", "c"),
        ("glob/Cargo.toml", "t"),
        ("glob/config.toml", "c"),
    ] {
        assert_eq!(
            fs::read_to_string(rootfs.join(path)).ok().as_deref(),
            Some(text),
            "{path}"
        );
    }
    assert!(
        !rootfs.join("build/src/src").exists(),
        "a directory's contents, not the directory"
    );
    let missing = copy(&["migrations", "./migrations"], "/build").unwrap_err();
    assert!(missing.contains("not in the build context"), "{missing}");
}

// ---------------------------------------------------------------------------
// The replay
// ---------------------------------------------------------------------------

fn replay(stage: &Stage, context: &Path, rootfs: &Path, cache: &Path) -> Result<(), String> {
    let mut workdir = "/".to_string();
    let mut copied = false;
    for step in &stage.instructions {
        let at = format!(
            "Dockerfile line {}: {} {}",
            step.line, step.keyword, step.args
        );
        match step.keyword.as_str() {
            "WORKDIR" => {
                workdir = clean(&join_path(&workdir, step.args.trim()));
                fs::create_dir_all(in_rootfs(rootfs, &workdir))
                    .map_err(|e| format!("{at}: {e}"))?;
            }
            "COPY" => {
                let (flags, args) = split_flags(&step.args);
                for flag in &flags {
                    let name = flag.split('=').next().unwrap_or(flag);
                    match name {
                        // Ownership and layer linking change nothing a build reads.
                        "--chown" | "--chmod" | "--link" => {}
                        "--from" => {
                            return Err(format!(
                                "{at}: COPY --from in the builder stage has no replay here \
                                 (tests/integration/image_build.rs)"
                            ))
                        }
                        _ => return Err(format!("{at}: COPY {flag} has no replay here")),
                    }
                }
                copy_from_context(context, rootfs, &workdir, &args)
                    .map_err(|e| format!("{at}: {e}"))?;
                copied = true;
            }
            "RUN" if !copied => {
                println!("not replayed (provisions the base image, before any COPY): {at}");
            }
            "RUN" => {
                let cwd = in_rootfs(rootfs, &workdir);
                // Cargo's default target directory, ./target beside the
                // manifest, is the persistent cache.
                if cwd.join("Cargo.toml").exists() && !cwd.join("target").exists() {
                    std::os::unix::fs::symlink(cache, cwd.join("target"))
                        .map_err(|e| format!("{at}: link target/ to the cache: {e}"))?;
                }
                run_step(step, &cwd).map_err(|e| format!("{at}\n{e}"))?;
            }
            "FROM" => {}
            other => {
                return Err(format!(
                    "{at}: `{other}` in the builder stage has no replay here; \
                     teach tests/integration/image_build.rs what it means for the build"
                ))
            }
        }
    }
    Ok(())
}

fn run_step(step: &Instruction, cwd: &Path) -> Result<(), String> {
    let args = step.args.trim();
    if args.starts_with("<<") || args.contains(" <<") {
        return Err("a heredoc has no replay here".into());
    }
    let argv: Vec<String> = if args.starts_with('[') {
        serde_json::from_str(args).map_err(|e| format!("exec form is not a JSON array: {e}"))?
    } else {
        // Docker's default shell; a SHELL instruction stops the replay.
        vec!["/bin/sh".into(), "-c".into(), args.to_string()]
    };
    // The replay runs on this machine, not in a container: a step that
    // installs packages or names a path outside its working directory would
    // change the host.
    let installs =
        Regex::new(r"\b(apt-get|apt|apk|dnf|yum|rustup)\b|\bcargo\s+install\b").expect("regex");
    if let Some(found) = installs.find(argv.last().map(String::as_str).unwrap_or("")) {
        return Err(format!(
            "the step runs `{}`: provisioning goes before the stage's first COPY, \
             where this replay leaves it to the machine",
            found.as_str()
        ));
    }
    let absolute = Regex::new(r"(?:^|[\s;&|<>()=])(/[^\s;&|<>()]*)").expect("regex");
    let script = argv.last().map(String::as_str).unwrap_or("");
    for found in absolute.captures_iter(script) {
        let path = &found[1];
        if path != "/dev/null" {
            return Err(format!(
                "the step names {path}, outside the build directory: this replay \
                 runs on the host, so builder steps stay inside WORKDIR (take \
                 artefacts in the next stage with COPY --from=builder)"
            ));
        }
    }

    let mut command = Command::new("nice");
    // Niced: the other integration tests run beside this one and several
    // of them measure time; the build is throughput work.
    command
        .args(["-n", "10"])
        .args(&argv)
        .current_dir(cwd)
        .env_clear();
    for key in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ] {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    command.envs(RELEASE_PROFILE_OVERRIDES.iter().copied());
    let started = Instant::now();
    let output = spawn_and_wait(command).map_err(|e| {
        format!(
            "cannot run `nice {}`: {e} (coreutils and a POSIX sh are needed)",
            argv.join(" ")
        )
    })?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("replayed in {:.1} s: RUN {args}", elapsed.as_secs_f64());
    if !output.status.success() {
        return Err(format!(
            "failed ({}) after {:.1} s\n--- stdout\n{}\n--- stderr (last 60 lines)\n{}",
            output.status,
            elapsed.as_secs_f64(),
            stdout.trim_end(),
            last_lines(&stderr, 60)
        ));
    }
    Ok(())
}

fn spawn_and_wait(mut command: Command) -> std::io::Result<Output> {
    use std::process::Stdio;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_bound_to_process(command)?.wait_with_output()
}

fn run_checked(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run the built binary ({what}): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the built binary's `{what}` failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// COPY <src>... <dest> from the assembled context, by Docker's rules: a
/// directory source copies its contents; several sources or a dest ending
/// in `/` make the dest a directory; sources may be filepath.Match globs;
/// files keep their modification times (which is why the Dockerfile touches
/// the sources it replaces a stub with).
fn copy_from_context(
    context: &Path,
    rootfs: &Path,
    workdir: &str,
    args: &[String],
) -> Result<(), String> {
    let (dest, sources) = args.split_last().ok_or("COPY without arguments")?;
    if sources.is_empty() {
        return Err("COPY needs a source and a destination".into());
    }
    let mut found = Vec::new();
    for source in sources {
        let matched = context_sources(context, source)?;
        if matched.is_empty() {
            return Err(format!(
                "COPY source `{source}` is not in the build context \
                 (excluded by .dockerignore, or missing?)"
            ));
        }
        found.extend(matched);
    }
    let dest_path = clean(&join_path(workdir, dest));
    let into_dir = dest.ends_with('/') || found.len() > 1;
    let dest_host = in_rootfs(rootfs, &dest_path);
    for source in found {
        let from = context.join(&source);
        if from.is_dir() {
            copy_tree(&from, &dest_host).map_err(|e| format!("COPY {source}: {e}"))?;
        } else {
            let to = if into_dir || dest_host.is_dir() {
                dest_host.join(from.file_name().expect("a file name"))
            } else {
                dest_host.clone()
            };
            copy_file(&from, &to).map_err(|e| format!("COPY {source}: {e}"))?;
        }
    }
    Ok(())
}

/// The context paths a COPY source names (a glob may name several).
fn context_sources(context: &Path, source: &str) -> Result<Vec<String>, String> {
    let cleaned = clean(source.trim_start_matches('/'));
    if !cleaned.contains(['*', '?', '[']) {
        return Ok(if cleaned == "." || context.join(&cleaned).exists() {
            vec![cleaned]
        } else {
            vec![]
        });
    }
    let glob = Regex::new(&format!("^{}$", glob_regex(&cleaned)))
        .map_err(|e| format!("COPY source `{source}` is not a valid pattern: {e}"))?;
    let mut all = Vec::new();
    walk(context, "", &mut |rel, _| {
        all.push(rel.to_string());
        true
    })
    .map_err(|e| e.to_string())?;
    Ok(all.into_iter().filter(|rel| glob.is_match(rel)).collect())
}

/// Go's filepath.Match syntax as a regex: `*` and `?` stop at a slash.
fn glob_regex(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '[' | ']' => out.push(ch),
            '\\' => out.push_str(&regex::escape(
                &chars.next().map(String::from).unwrap_or_default(),
            )),
            _ => out.push_str(&regex::escape(&ch.to_string())),
        }
    }
    out
}

/// What the image's later stages see: each COPY destination mapped to the
/// file on this machine (from the context, or from the replayed builder),
/// and the final stage's ENV.
struct ImageView {
    files: BTreeMap<String, PathBuf>,
    env: Vec<(String, String)>,
}

impl ImageView {
    fn collect(dockerfile: &Dockerfile, context: &Path, rootfs: &Path) -> Result<Self, String> {
        let mut files = BTreeMap::new();
        let mut env = Vec::new();
        let last = dockerfile.stages.len() - 1;
        for (index, stage) in dockerfile.stages.iter().enumerate() {
            if stage.name.as_deref() == Some("builder") {
                continue;
            }
            for step in &stage.instructions {
                let at = format!(
                    "Dockerfile line {}: {} {}",
                    step.line, step.keyword, step.args
                );
                match step.keyword.as_str() {
                    "COPY" => {
                        let (flags, args) = split_flags(&step.args);
                        let from = flags.iter().find_map(|f| f.strip_prefix("--from="));
                        let (dest, sources) =
                            args.split_last().ok_or(format!("{at}: no arguments"))?;
                        for source in sources {
                            let host = match from {
                                Some("builder") => {
                                    let path = in_rootfs(rootfs, &clean(source));
                                    if !path.exists() {
                                        return Err(format!(
                                            "{at}: the builder stage left no {source} \
                                             (the replay ran every builder step)"
                                        ));
                                    }
                                    path
                                }
                                Some(other) if dockerfile.stage(other).is_ok() => {
                                    return Err(format!(
                                        "{at}: COPY from stage `{other}` has no replay here"
                                    ))
                                }
                                // An image from a registry: nothing of this repository.
                                Some(_) => continue,
                                None => {
                                    let matched = context_sources(context, source)?;
                                    let first = matched.first().ok_or(format!(
                                        "{at}: `{source}` is not in the build context \
                                         (excluded by .dockerignore, or missing?)"
                                    ))?;
                                    context.join(first)
                                }
                            };
                            let dest = if dest.ends_with('/') || sources.len() > 1 {
                                format!("{}/{}", dest.trim_end_matches('/'), base_name(source))
                            } else {
                                dest.to_string()
                            };
                            files.insert(clean(&dest), host);
                        }
                    }
                    "ADD" => {
                        return Err(format!(
                            "{at}: ADD has no check here; COPY is what the image uses"
                        ))
                    }
                    "ENV" if index == last => env.extend(parse_env(&step.args)),
                    _ => {}
                }
            }
        }
        Ok(Self { files, env })
    }

    /// The file the ENTRYPOINT's program resolves to, as PATH would find it.
    fn binary(&self, program: &str) -> Result<PathBuf, String> {
        let hits: Vec<&PathBuf> = self
            .files
            .iter()
            .filter(|(dest, _)| {
                if program.starts_with('/') {
                    dest.as_str() == program
                } else {
                    base_name(dest) == program
                }
            })
            .map(|(_, host)| host)
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no COPY puts the ENTRYPOINT's `{program}` into the image"
            )),
            _ => Err(format!("several COPY destinations are named `{program}`")),
        }
    }

    /// The final stage's ENV, with paths the image's COPYs provide pointed
    /// at the files on this machine.
    fn env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(key, value)| {
                let value = match self.files.get(&clean(value)) {
                    Some(host) if value.starts_with('/') => host.display().to_string(),
                    _ => value.clone(),
                };
                (key.clone(), value)
            })
            .collect()
    }
}

fn runtime_program(stage: &Stage) -> Result<String, String> {
    let entrypoint = stage
        .instructions
        .iter()
        .rev()
        .find(|i| i.keyword == "ENTRYPOINT")
        .ok_or("the final stage has no ENTRYPOINT")?;
    let argv: Vec<String> = serde_json::from_str(entrypoint.args.trim())
        .map_err(|e| format!("ENTRYPOINT is not in exec form ({e}): {}", entrypoint.args))?;
    argv.into_iter()
        .next()
        .ok_or_else(|| "ENTRYPOINT is empty".into())
}

/// `ENV KEY=value ...` (quotes removed) or the legacy `ENV KEY value`.
fn parse_env(args: &str) -> Vec<(String, String)> {
    let args = args.trim();
    if !args.split_whitespace().next().unwrap_or("").contains('=') {
        let (key, value) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        return vec![(key.to_string(), value.trim().to_string())];
    }
    args.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// The Dockerfile
// ---------------------------------------------------------------------------

struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

struct Stage {
    name: Option<String>,
    instructions: Vec<Instruction>,
}

struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    /// Docker's line syntax with the default escape character: comment lines
    /// dropped (inside continuations too), `\` at a line's end continues it.
    fn parse(text: &str) -> Result<Self, String> {
        let mut instructions = Vec::new();
        let mut pending: Option<(usize, String)> = None;
        let mut in_directives = true;
        for (index, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if in_directives {
                if let Some(directive) = trimmed.strip_prefix('#') {
                    let directive = directive.trim().to_ascii_lowercase();
                    if directive.starts_with("escape=") && directive != "escape=\\" {
                        return Err(format!("Dockerfile: `# {directive}` has no replay here"));
                    }
                    continue;
                }
                in_directives = false;
            }
            if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
                continue;
            }
            let (line, mut buffer) = pending.take().unwrap_or((index + 1, String::new()));
            match trimmed.strip_suffix('\\') {
                Some(head) => {
                    buffer.push_str(head);
                    buffer.push(' ');
                    pending = Some((line, buffer));
                }
                None => {
                    buffer.push_str(trimmed);
                    let (keyword, args) = buffer
                        .split_once(char::is_whitespace)
                        .unwrap_or((&buffer, ""));
                    instructions.push(Instruction {
                        line,
                        keyword: keyword.to_ascii_uppercase(),
                        args: args.trim().to_string(),
                    });
                }
            }
        }
        let mut stages: Vec<Stage> = Vec::new();
        for instruction in instructions {
            if instruction.keyword == "FROM" {
                let words: Vec<&str> = instruction.args.split_whitespace().collect();
                let name = match words.as_slice() {
                    [.., as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                    _ => None,
                };
                stages.push(Stage {
                    name,
                    instructions: Vec::new(),
                });
            }
            match stages.last_mut() {
                Some(stage) => stage.instructions.push(instruction),
                // ARG before the first FROM parameterises the FROM lines only.
                None if instruction.keyword == "ARG" => {}
                None => {
                    return Err(format!(
                        "Dockerfile line {}: before any FROM",
                        instruction.line
                    ))
                }
            }
        }
        if stages.is_empty() {
            return Err("Dockerfile: no FROM".into());
        }
        Ok(Self { stages })
    }

    fn stage(&self, name: &str) -> Result<&Stage, String> {
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .ok_or_else(|| format!("Dockerfile: no stage named `{name}` (FROM ... AS {name})"))
    }
}

/// Leading `--flag[=value]` words, then the arguments (JSON array form too).
fn split_flags(args: &str) -> (Vec<String>, Vec<String>) {
    let mut rest = args.trim();
    let mut flags = Vec::new();
    while rest.starts_with("--") {
        let (flag, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        flags.push(flag.to_string());
        rest = tail.trim_start();
    }
    let args = if rest.starts_with('[') {
        serde_json::from_str(rest)
            .unwrap_or_else(|_| rest.split_whitespace().map(String::from).collect())
    } else {
        rest.split_whitespace().map(String::from).collect()
    };
    (flags, args)
}

// ---------------------------------------------------------------------------
// .dockerignore, as Docker reads and matches it (moby/patternmatcher:
// ignorefile.ReadAll, then MatchesOrParentMatches)
// ---------------------------------------------------------------------------

struct DockerIgnore {
    patterns: Vec<Pattern>,
}

struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

enum MatchKind {
    Exact,
    Prefix,
    Suffix,
    Regex(Regex),
}

impl DockerIgnore {
    fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let raw = if index == 0 {
                raw.trim_start_matches('\u{feff}')
            } else {
                raw
            };
            if raw.starts_with('#') {
                continue;
            }
            let mut line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let exclusion = line.starts_with('!');
            if exclusion {
                line = line[1..].trim();
                if line.is_empty() {
                    return Err(format!(
                        "line {}: illegal exclusion pattern: \"!\"",
                        index + 1
                    ));
                }
            }
            let mut cleaned = clean(line);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let kind =
                compile(&cleaned).map_err(|e| format!("line {}: `{line}`: {e}", index + 1))?;
            patterns.push(Pattern {
                cleaned,
                exclusion,
                kind,
            });
        }
        Ok(Self { patterns })
    }

    fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (relative to the context, slash-separated) is left out:
    /// a pattern matches the path or any of its parent directories, and the
    /// last pattern that matches decides.
    fn excludes(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rfind('/') {
            Some(cut) => path[..cut].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let hit = pattern.matches(path)
                || (1..=parents.len()).any(|n| pattern.matches(&parents[..n].join("/")));
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            MatchKind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || (suffix.starts_with('/') && path == &suffix[1..])
            }
            MatchKind::Regex(re) => re.is_match(path),
        }
    }
}

/// patternmatcher's Pattern.compile: `*` and `?` stop at `/`, `**` spans
/// directories, `[...]` is a class, `\` escapes.
fn compile(pattern: &str) -> Result<MatchKind, String> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("^");
    let mut detected = Detected::Exact;
    let mut pos = 0;
    let mut token = 0;
    while pos < chars.len() {
        let ch = chars[pos];
        pos += 1;
        match ch {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        re.push_str(".*");
                        detected = Detected::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    detected = Detected::Regex;
                }
                if token == 0 {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                detected = Detected::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                detected = Detected::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.get(pos) {
                Some(&next) => {
                    pos += 1;
                    re.push('\\');
                    re.push(next);
                    detected = Detected::Regex;
                }
                None => re.push('\\'),
            },
            '[' | ']' => {
                re.push(ch);
                detected = Detected::Regex;
            }
            _ => re.push(ch),
        }
        token += 1;
    }
    Ok(match detected {
        Detected::Exact => MatchKind::Exact,
        Detected::Prefix => MatchKind::Prefix,
        Detected::Suffix => MatchKind::Suffix,
        Detected::Regex => {
            re.push('$');
            MatchKind::Regex(Regex::new(&re).map_err(|e| format!("bad pattern: {e}"))?)
        }
    })
}

/// Go's filepath.Clean on a slash-separated path.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// Copies what `.dockerignore` admits from `root` to `context`; returns the
/// admitted files' paths. An excluded directory is not entered unless an
/// exception (`!...`) might bring back something under it, as Docker does.
fn assemble_context(
    root: &Path,
    context: &Path,
    ignore: &DockerIgnore,
) -> std::io::Result<Vec<String>> {
    fs::create_dir_all(context)?;
    let mut admitted = Vec::new();
    let mut failure = None;
    walk(root, "", &mut |rel, kind| {
        let excluded = ignore.excludes(rel);
        if kind.is_dir() {
            if !excluded {
                if let Err(e) = fs::create_dir_all(context.join(rel)) {
                    failure.get_or_insert(e);
                }
            }
            return !excluded || ignore.has_exceptions();
        }
        if !excluded {
            let result = if kind.is_symlink() {
                fs::read_link(root.join(rel)).and_then(|to| {
                    fs::create_dir_all(context.join(rel).parent().expect("parent"))?;
                    std::os::unix::fs::symlink(to, context.join(rel))
                })
            } else {
                copy_file(&root.join(rel), &context.join(rel))
            };
            match result {
                Ok(()) => admitted.push(rel.to_string()),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        false
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(admitted),
    }
}

/// Depth-first, sorted; `visit(rel, file_type)` returns whether to enter a
/// directory.
fn walk(
    dir: &Path,
    rel: &str,
    visit: &mut dyn FnMut(&str, fs::FileType) -> bool,
) -> std::io::Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        if visit(&child, kind) && kind.is_dir() {
            walk(&entry.path(), &child, visit)?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            copy_file(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A copy that keeps the modification time, as COPY does.
fn copy_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to)?;
    let modified = fs::metadata(from)?.modified()?;
    fs::File::options()
        .write(true)
        .open(to)?
        .set_modified(modified)
}

fn in_rootfs(rootfs: &Path, path: &str) -> PathBuf {
    rootfs.join(clean(path).trim_start_matches('/'))
}

fn join_path(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", base.trim_end_matches('/'))
    }
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The admitted files by top-level entry, with counts.
fn summarise(admitted: &[String]) -> String {
    let mut top: BTreeMap<&str, usize> = BTreeMap::new();
    for path in admitted {
        *top.entry(path.split('/').next().unwrap_or(path))
            .or_default() += 1;
    }
    top.iter()
        .map(|(name, count)| {
            if *count == 1 {
                name.to_string()
            } else {
                format!("{name}/ ({count})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
