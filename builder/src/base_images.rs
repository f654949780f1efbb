//! Which images a Dockerfile builds on, and whether a pusher may use them: the check that runs
//! before the Docker Engine sees a Dockerfile.
//!
//! The engine resolves a `FROM` (or `COPY --from=`, `RUN --mount=from=`) against the images it
//! holds before it pulls anything, and it holds every deployed app's image, tagged
//! `<registry>/apps/<app>:<commit>` and known by its id. So a Dockerfile could read another
//! app's image without any login. [`check`] reads the Dockerfile as the engine's parser does and
//! refuses, before the build, every image that is in Slipway's registry (or a registry on this
//! machine, whatever the address is spelled) unless it is a stack image (`stacks/...`), and every
//! image named by its id or digest alone. Images of apps come back to the caller, which asks the
//! controller whether the pusher may read them; everything else is a public image, pulled
//! without a login.
//!
//! The parse follows the engine's: parser directives (`# escape=`), comments, line
//! continuations (comment and blank lines inside them skipped), case-insensitive instructions,
//! flags before the arguments, `ARG`s before the first `FROM` (with build args overriding their
//! defaults) expanded in `FROM`, and references to earlier stages (by name in `FROM`, by name or
//! index in `--from`: the engine takes a number in `FROM` for an image id). Where the
//! engine's reading could differ from this one (heredocs, which newer parsers have and this one
//! does not; an escape directive an older parser ignores), the check reads it every way: every
//! physical line is also tried as the start of an instruction, and every escape character named
//! is tried. Reading more than the engine does can refuse a strange Dockerfile; reading less
//! could let an image through, so it never does. What cannot be resolved before the build (a
//! variable the check cannot evaluate, or one that expands too long or nests too deep to
//! evaluate cheaply) is refused.
//!
//! A base image's own `ONBUILD` triggers are not in the Dockerfile's text, yet the engine runs
//! them right after the `FROM`, and a trigger's `COPY --from` reads any image the engine holds.
//! So [`check`] also returns the images the stages build on (every `FROM` that is not an
//! earlier stage or `scratch`, expanded); the caller has the engine pull each (without a login)
//! and read its triggers, and [`naming_trigger`] refuses any that could name an image (a
//! `--from` or `--mount` anywhere in it). The build is never asked to pull, so it builds on the
//! very images whose triggers were read; and so that no pull retags one in between, the images
//! the build copies or mounts from come back too, for the caller to pull before the build, and
//! a base image asked for with `FROM --platform` for another platform than the engine's is
//! refused (the engine would pull that platform's image during the build).
//!
//! What this module does not do: IO, or the access question itself (it has no identity).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use slipway_core::AppName;

/// An image of an app in Slipway's registry that the Dockerfile names; the pusher must be
/// allowed to read that app.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AppImage {
    /// The app whose image it is.
    pub(crate) app: AppName,
    /// Where and how the Dockerfile names it, for the refusal.
    pub(crate) named: Named,
}

/// An image from outside the Dockerfile that the build uses. One a stage builds on (`FROM`, not
/// an earlier stage nor `scratch`) has its `ONBUILD` triggers run in this build, so the caller
/// reads them before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseImage {
    /// The reference, with the global args expanded, as the engine will look it up.
    pub(crate) reference: String,
    /// Where and how the Dockerfile names it, for the refusal.
    pub(crate) named: Named,
}

/// What [`check`] found: the images whose use the caller still has to decide.
#[derive(Debug, Default)]
pub(crate) struct Images {
    /// The app images named, each once per place: the pusher must be allowed to read the app.
    pub(crate) apps: Vec<AppImage>,
    /// The images stages build on, each once: their triggers must name no other image.
    pub(crate) bases: Vec<BaseImage>,
    /// The other images the build copies or mounts from (`--from`, `--mount=from=`), each
    /// once: the caller has the engine hold them before the build, so that the build pulls
    /// nothing (a pull could retag a base image after its triggers were read).
    pub(crate) sources: Vec<BaseImage>,
}

/// Where a Dockerfile names an image, and how: `line 3: FROM 127.0.0.1:5000/apps/web:1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Named {
    /// The physical line (1-based) the instruction starts on.
    line: usize,
    /// The instruction and the image as written (`FROM x`, `COPY --from=x`, `# syntax=x`).
    what: String,
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dockerfile line {}: {}", self.line, self.what)
    }
}

/// Why a Dockerfile may not be built, as one line for the pusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    named: Named,
    why: Why,
}

/// The kinds of refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    /// An image in Slipway's registry (or another registry on this machine) that is not a
    /// stack image or an app's.
    OwnRegistry,
    /// An image named by its id or digest alone: it could be any image the engine holds.
    ById,
    /// A value with variables that cannot be evaluated before the build.
    Unresolved(String),
    /// A base image whose `ONBUILD` triggers name other images: the trigger (shown).
    Triggers(String),
    /// A base image the engine does not have and could not pull without a login: why.
    Unavailable(String),
    /// A base image asked for with `--platform` for another platform than the engine's, which
    /// the engine may pull for that platform during the build, after its triggers were read.
    Platform,
    /// So many continued lines that reading them every way would cost too much.
    Tangled,
}

impl Refusal {
    /// The refusal for an app's image that the pusher may not read.
    pub(crate) fn no_access(image: &AppImage) -> Refusal {
        Refusal {
            named: image.named.clone(),
            why: Why::OwnRegistry,
        }
    }

    /// The refusal for a base image whose `ONBUILD` trigger names another image.
    pub(crate) fn triggers(image: &BaseImage, trigger: &str) -> Refusal {
        Refusal {
            named: image.named.clone(),
            why: Why::Triggers(trigger.to_owned()),
        }
    }

    /// The refusal for a base image the engine lacks and cannot pull without a login.
    pub(crate) fn unavailable(image: &BaseImage, why: &str) -> Refusal {
        Refusal {
            named: image.named.clone(),
            why: Why::Unavailable(why.to_owned()),
        }
    }
}

/// The first of a base image's `ONBUILD` triggers that could name another image: one with a
/// `--from` (`COPY`, `ADD`) or a `--mount` (`RUN`, whose `from=` may name an image) anywhere,
/// in any case, quoted, escaped or continued. The engine runs the triggers right after `FROM`,
/// where no check of the Dockerfile's text sees them. Conservative: a trigger that merely
/// mentions one (`RUN echo --from`) is taken too, which costs little, as public base images
/// with triggers that copy from other images are rare.
pub(crate) fn naming_trigger(triggers: &[String]) -> Option<&str> {
    triggers.iter().map(String::as_str).find(|trigger| {
        // Quotes, escapes and continued lines may sit inside a flag (`--fr\om`, `--"from"`,
        // `--fr\<newline>om`): drop them all, and every blank.
        let plain: String = trigger
            .chars()
            .filter(|c| !matches!(c, '"' | '\'' | '\\' | '`') && !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        plain.contains("--from") || plain.contains("--mount")
    })
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.why {
            Why::OwnRegistry => write!(
                f,
                "{} is an image in Slipway's registry that this push may not use; build on a \
                 stacks/ image, an app you have access to, or a public image",
                self.named
            ),
            Why::ById => write!(
                f,
                "{} names an image by its id alone, which could be any image on this server; \
                 name it by repository and tag",
                self.named
            ),
            Why::Tangled => write!(
                f,
                "{} continues over too many lines to check before the build; split it up",
                self.named
            ),
            Why::Triggers(trigger) => write!(
                f,
                "{} has ONBUILD triggers that name other images ({}); Slipway does not build on \
                 those",
                self.named,
                shown(trigger)
            ),
            Why::Platform => write!(
                f,
                "{} asks for another platform (--platform) than this server's, for which the \
                 engine could pull another image during the build; Slipway builds for this \
                 server's platform: drop the flag or use $BUILDPLATFORM",
                self.named
            ),
            Why::Unavailable(why) => write!(
                f,
                "{} is not on this server and could not be pulled without a login ({})",
                self.named,
                shown(why)
            ),
            Why::Unresolved(why) => write!(
                f,
                "{} cannot be resolved before the build ({}); write the image name out",
                self.named,
                shown(why)
            ),
        }
    }
}

/// Build args the Docker Engine gives the build, by name.
pub(crate) type BuildArgs = HashMap<String, String>;

/// Checks the images `dockerfile` names for a build with `build_args`, where Slipway's registry
/// is `registry` (`127.0.0.1:5000`, as the engine reaches it). Returns the app images it names,
/// each once per place, for the caller to check access to, and the images its stages build on,
/// for the caller to read their triggers; or the first image refused.
pub(crate) fn check(
    dockerfile: &str,
    build_args: &BuildArgs,
    registry: &str,
) -> Result<Images, Refusal> {
    let registry = Registry::parse(registry);
    let text = dockerfile.strip_prefix('\u{feff}').unwrap_or(dockerfile);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_end_matches(['\r', '\n']))
        .collect();
    let directives = directives(&lines);
    let mut found = Found {
        registry: &registry,
        apps: Vec::new(),
        bases: Vec::new(),
        sources: Vec::new(),
    };
    // BuildKit takes its frontend from `# syntax=` or the BUILDKIT_SYNTAX build arg: an image too.
    if let Some((line, value)) = &directives.syntax {
        let named = Named {
            line: line + 1,
            what: format!("# syntax={}", shown(value)),
        };
        found.image(value, Stages::NONE, named)?;
    }
    if let Some(value) = build_args.get("BUILDKIT_SYNTAX") {
        let named = Named {
            line: 1,
            what: format!("build arg BUILDKIT_SYNTAX={}", shown(value)),
        };
        found.image(value, Stages::NONE, named)?;
    }
    for escape in directives.escapes {
        found.scan(&lines, escape, build_args)?;
    }
    let mut seen = HashSet::new();
    found.apps.retain(|a| seen.insert(a.clone()));
    let mut seen = HashSet::new();
    found.bases.retain(|b| seen.insert(b.reference.clone()));
    // Pulled before the build as bases anyway.
    found.sources.retain(|b| seen.insert(b.reference.clone()));
    Ok(Images {
        apps: found.apps,
        bases: found.bases,
        sources: found.sources,
    })
}

/// The parser directives at the top of a Dockerfile that matter here.
struct Directives {
    /// The escape characters to read the file with: `\`, and any `# escape=` names.
    escapes: Vec<char>,
    /// The `# syntax=` directive: (line index, value).
    syntax: Option<(usize, String)>,
}

/// Reads the leading `# key=value` lines. Newer parsers read every directive in the leading
/// block, older ones stop at the first that is not `escape`; taking every one in the block covers
/// both.
fn directives(lines: &[&str]) -> Directives {
    let mut escapes = vec!['\\'];
    let mut syntax = None;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim();
        let value = value.trim();
        let is_key = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && key.chars().all(|c| c.is_ascii_alphanumeric());
        if !is_key || value.is_empty() {
            break;
        }
        match key.to_ascii_lowercase().as_str() {
            "escape" => {
                if let Some(c @ ('\\' | '`')) = value.chars().next()
                    && !escapes.contains(&c)
                {
                    escapes.push(c);
                }
            }
            "syntax" => syntax = Some((i, value.to_owned())),
            _ => {}
        }
    }
    Directives { escapes, syntax }
}

/// The instructions that can name an image: `FROM`, `COPY --from`, `RUN --mount`, and `ADD`
/// and `ONBUILD`, which wrap or resemble them.
const IMAGE_COMMANDS: &[&str] = &["from", "copy", "add", "run", "onbuild"];

/// Characters past its leading blanks that a glance at a line reads: more than any command in
/// [`IMAGE_COMMANDS`] and the blank after it.
const COMMAND_MAX: usize = 16;

/// The most text the lines read only in case another parser starts an instruction on them may
/// add up to.
const EXTRA_TEXT_MAX: usize = 4 << 20;

/// The longest value an expansion may make: far more than any image name.
const VALUE_MAX: usize = 4096;

/// How deeply `${A:-${B:-...}}` may nest.
const NESTING_MAX: usize = 8;

/// The most bytes the global args' expanded defaults may add up to.
const ARGS_MAX: usize = 1 << 20;

/// The builtin args BuildKit gives a build: their values are not known here.
const PLATFORM_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// Whether `flag` is not `--platform`, or asks for the platform the engine builds for anyway:
/// none, this machine's (`linux/amd64` here), or `$BUILDPLATFORM` / `$TARGETPLATFORM` when no
/// ARG or build arg gives them a value (the engine sets them to its own platform, or the
/// classic builder to nothing). A base image for this platform is the one the engine holds and
/// the check read; any other could be pulled afresh during the build.
fn is_native_platform(flag: &str, args: &HashMap<String, Value>) -> bool {
    let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
    if !name.eq_ignore_ascii_case("--platform") {
        return true;
    }
    let value = value.trim_matches(['"', '\'']);
    let native = match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        _ => return value.is_empty(),
    };
    let set_by_engine = ["BUILDPLATFORM", "TARGETPLATFORM"].iter().any(|arg| {
        (value == format!("${arg}") || value == format!("${{{arg}}}"))
            && !matches!(args.get(*arg), Some(Value::Set(_) | Value::Unknown(_)))
    });
    value.is_empty() || value.eq_ignore_ascii_case(native) || set_by_engine
}

/// A global `ARG`'s value as `FROM` sees it.
#[derive(Debug, Clone)]
enum Value {
    /// Declared with a value (its default or a build arg).
    Set(String),
    /// Declared without one.
    Unset,
    /// Declared with a default that could not be evaluated.
    Unknown(String),
}

/// The checks' findings so far.
struct Found<'a> {
    registry: &'a Registry,
    apps: Vec<AppImage>,
    bases: Vec<BaseImage>,
    sources: Vec<BaseImage>,
}

impl Found<'_> {
    /// Reads the whole file with one escape character.
    fn scan(
        &mut self,
        lines: &[&str],
        escape: char,
        build_args: &BuildArgs,
    ) -> Result<(), Refusal> {
        // The engine's reading: one instruction per logical line, in order.
        let mut instructions = Vec::new();
        let mut visited = 0;
        let mut i = 0;
        while i < lines.len() {
            match logical_line(lines, i, escape, usize::MAX, &mut visited) {
                Some(logical) => {
                    instructions.push((i, logical.text));
                    i = logical.next;
                }
                None => i += 1,
            }
        }
        let starts: HashSet<usize> = instructions.iter().map(|(i, _)| *i).collect();

        let mut args: HashMap<String, Value> = HashMap::new();
        // The bytes the global args' values add up to, against [`ARGS_MAX`].
        let mut arg_bytes = 0;
        // Each stage's name (lower-case), in order; `None` for an unnamed one.
        let mut stages: Vec<Option<String>> = Vec::new();
        for (i, text) in &instructions {
            let ins = Instruction::parse(text);
            let line = i + 1;
            match ins.command.as_str() {
                "arg" if stages.is_empty() => {
                    global_args(&ins.rest, escape, build_args, &mut args, &mut arg_bytes);
                }
                "from" => {
                    self.from(&ins, escape, &args, &stages, line)?;
                    stages.push(stage_name(&ins.rest));
                }
                _ => {
                    // Only stages before this one are done; the current one is not a source.
                    let earlier = Stages {
                        names: &stages[..stages.len().saturating_sub(1)],
                        by_index: true,
                    };
                    self.flags(&ins, earlier, line, true)?;
                    if ins.command == "onbuild" {
                        self.onbuild(&ins, line)?;
                    }
                }
            }
        }

        // Every other physical line as the start of an instruction, in case the engine reads
        // one there (a heredoc's end, say): no stage names count there. A glance at its first
        // word leaves out most; the rest are read in full, within a budget that keeps a file of
        // endless continuations from costing the square of its size.
        let budget = lines.len().saturating_mul(8).saturating_add(10_000);
        let mut visited = 0;
        let mut read = 0;
        for i in (0..lines.len()).filter(|i| !starts.contains(i)) {
            let Some(glance) = logical_line(lines, i, escape, COMMAND_MAX, &mut visited) else {
                continue;
            };
            let word = glance.text.trim().split(is_blank).next();
            let command = word.unwrap_or_default().to_lowercase();
            if IMAGE_COMMANDS.contains(&command.as_str()) {
                let Some(full) = logical_line(lines, i, escape, usize::MAX, &mut visited) else {
                    continue;
                };
                read += full.text.len();
                if read <= EXTRA_TEXT_MAX {
                    let ins = Instruction::parse(&full.text);
                    match ins.command.as_str() {
                        "from" => {
                            let before = self.bases.len();
                            self.from(&ins, escape, &args, &[], i + 1)?;
                            // A FROM read only here that names one of the stages is taken for
                            // that stage: it is nothing to pull.
                            if self
                                .bases
                                .get(before)
                                .is_some_and(|b| is_stage(&b.reference, &stages))
                            {
                                self.bases.truncate(before);
                            }
                        }
                        "onbuild" => self.onbuild(&ins, i + 1)?,
                        _ => {
                            let before = self.sources.len();
                            self.flags(&ins, Stages::NONE, i + 1, true)?;
                            // As for FROM: a stage's name is taken for the stage.
                            let mut i = before;
                            while i < self.sources.len() {
                                if is_stage(&self.sources[i].reference, &stages) {
                                    self.sources.remove(i);
                                } else {
                                    i += 1;
                                }
                            }
                        }
                    }
                }
            }
            if visited > budget || read > EXTRA_TEXT_MAX {
                return Err(Refusal {
                    named: Named {
                        line: i + 1,
                        what: "this line".into(),
                    },
                    why: Why::Tangled,
                });
            }
        }
        Ok(())
    }

    /// `FROM [--flags] image [AS name]`: the image, with the global args expanded.
    fn from(
        &mut self,
        ins: &Instruction,
        escape: char,
        args: &HashMap<String, Value>,
        stages: &[Option<String>],
        line: usize,
    ) -> Result<(), Refusal> {
        let stages = Stages {
            names: stages,
            by_index: false,
        };
        self.flags(ins, stages, line, false)?;
        let Some(word) = ins.rest.split(is_blank).find(|w| !w.is_empty()) else {
            // The engine refuses a FROM without an image.
            return Ok(());
        };
        let named = Named {
            line,
            what: format!("FROM {}", shown(word)),
        };
        let image = expand(word, escape, args).map_err(|e| Refusal {
            named: named.clone(),
            why: Why::Unresolved(e),
        })?;
        self.image(&image, stages, named.clone())?;
        if !image.is_empty() && image != "scratch" && !is_stage(&image, stages.names) {
            // The engine uses the image it holds only if it is of that platform, and pulls
            // another otherwise: one whose triggers nobody read.
            if ins.flags.iter().any(|f| !is_native_platform(f, args)) {
                return Err(Refusal {
                    named,
                    why: Why::Platform,
                });
            }
            self.bases.push(BaseImage {
                reference: image,
                named,
            });
        }
        Ok(())
    }

    /// The flags that name images: `--from=<image>` and `--mount=...,from=<image>`. With
    /// `keep`, the images that are not stages are kept as the build's sources.
    fn flags(
        &mut self,
        ins: &Instruction,
        stages: Stages,
        line: usize,
        keep: bool,
    ) -> Result<(), Refusal> {
        let keyword = ins.command.to_ascii_uppercase();
        for flag in &ins.flags {
            let Some((name, value)) = flag.strip_prefix("--").and_then(|f| f.split_once('='))
            else {
                continue;
            };
            let sources: Vec<String> = match name.to_ascii_lowercase().as_str() {
                "from" => vec![value.to_owned()],
                "mount" => mount_sources(value),
                _ => continue,
            };
            for source in sources {
                let named = Named {
                    line,
                    what: format!("{keyword} --{name}={}", shown(value)),
                };
                if source.contains('$') {
                    return Err(Refusal {
                        named,
                        why: Why::Unresolved("a variable in a flag".into()),
                    });
                }
                self.image(&source, stages, named.clone())?;
                let by_index = stages.by_index
                    && source
                        .parse::<usize>()
                        .is_ok_and(|i| i < stages.names.len());
                if keep && !source.is_empty() && !by_index && !is_stage(&source, stages.names) {
                    self.sources.push(BaseImage {
                        reference: source,
                        named,
                    });
                }
            }
        }
        Ok(())
    }

    /// `ONBUILD <instruction>`: the trigger runs in a later build, where this file's stages mean
    /// nothing, so its images are checked as images.
    fn onbuild(&mut self, ins: &Instruction, line: usize) -> Result<(), Refusal> {
        let inner = Instruction::parse(&ins.rest);
        // Run in a later build, not this one: nothing to pull now.
        self.flags(&inner, Stages::NONE, line, false)?;
        if inner.command == "from"
            && let Some(word) = inner.rest.split(is_blank).find(|w| !w.is_empty())
        {
            let named = Named {
                line,
                what: format!("ONBUILD FROM {}", shown(word)),
            };
            if word.contains('$') {
                return Err(Refusal {
                    named,
                    why: Why::Unresolved("a variable in ONBUILD".into()),
                });
            }
            self.image(word, Stages::NONE, named)?;
        }
        Ok(())
    }

    /// Judges one image value (already expanded), where `stages` are the stages it may name.
    fn image(&mut self, value: &str, stages: Stages, named: Named) -> Result<(), Refusal> {
        match judge(value, stages, self.registry) {
            Verdict::Allowed => Ok(()),
            Verdict::App(app) => {
                self.apps.push(AppImage { app, named });
                Ok(())
            }
            Verdict::Refused(why) => Err(Refusal { named, why }),
        }
    }
}

/// A logical line: an instruction's text joined over its continuations.
struct Logical {
    /// The text, without comment and blank lines inside it.
    text: String,
    /// The index of the physical line after it.
    next: usize,
}

/// The logical line that starts at physical line `i`, its text cut after `limit` characters
/// past its leading blanks; `None` for a blank or comment line. `visited` counts the physical
/// lines read.
fn logical_line(
    lines: &[&str],
    i: usize,
    escape: char,
    limit: usize,
    visited: &mut usize,
) -> Option<Logical> {
    *visited += 1;
    let first = lines[i].trim_start();
    if first.starts_with('#') {
        return None;
    }
    let (text, mut done) = continuation(first, escape);
    if done && text.is_empty() {
        return None;
    }
    let mut line = text.to_owned();
    // Characters from the first that is not blank: what the limit counts.
    let mut content = line.trim_start().len();
    let mut j = i + 1;
    while !done && j < lines.len() {
        if content > limit {
            return Some(Logical {
                text: line,
                next: j,
            });
        }
        *visited += 1;
        let raw = lines[j];
        j += 1;
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let (text, end) = continuation(raw, escape);
        line.push_str(text);
        content += if content == 0 {
            text.trim_start().len()
        } else {
            text.len()
        };
        done = end;
    }
    Some(Logical {
        text: line,
        next: j,
    })
}

/// `line` without a trailing escape character (and the blanks after it), and whether the line
/// ends the instruction (it had none).
fn continuation(line: &str, escape: char) -> (&str, bool) {
    match line.trim_end_matches([' ', '\t']).strip_suffix(escape) {
        Some(text) => (text, false),
        None => (line, true),
    }
}

/// One instruction: its lower-case command, its leading `--flags` and the rest of the line.
struct Instruction {
    command: String,
    flags: Vec<String>,
    rest: String,
}

impl Instruction {
    fn parse(text: &str) -> Instruction {
        let text = text.trim();
        let (command, rest) = text.split_once(is_blank).unwrap_or((text, ""));
        let (flags, rest) = builder_flags(rest);
        Instruction {
            command: command.to_lowercase(),
            flags,
            rest,
        }
    }
}

/// The blanks the engine splits an instruction on.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r')
}

/// The `--flag` words at the start of `args` (quotes and backslashes in them resolved, as the
/// engine does) and the rest; a `--` word ends them.
fn builder_flags(args: &str) -> (Vec<String>, String) {
    let chars: Vec<char> = args.chars().collect();
    let mut flags = Vec::new();
    let mut pos = 0;
    loop {
        while pos < chars.len() && chars[pos].is_whitespace() {
            pos += 1;
        }
        if !(pos + 1 < chars.len() && chars[pos] == '-' && chars[pos + 1] == '-') {
            return (flags, chars[pos..].iter().collect());
        }
        let mut word = String::new();
        let mut quote = None;
        while pos < chars.len() {
            let c = chars[pos];
            pos += 1;
            match quote {
                None if c.is_whitespace() => break,
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if let Some(&next) = chars.get(pos) {
                        word.push(next);
                        pos += 1;
                    }
                }
                _ => word.push(c),
            }
        }
        if word == "--" {
            return (flags, chars[pos..].iter().collect());
        }
        flags.push(word);
    }
}

/// The `from=` values in a `--mount` flag's comma-separated fields.
fn mount_sources(value: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            _ => fields.last_mut().expect("one field at least").push(c),
        }
    }
    fields
        .into_iter()
        .filter_map(|f| {
            let (key, value) = f.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("from")
                .then(|| value.to_owned())
        })
        .collect()
}

/// The stage name of `FROM image AS name`, lower-case; `None` when unnamed or named with a
/// variable (then nothing may refer to it by name here).
fn stage_name(rest: &str) -> Option<String> {
    let words: Vec<&str> = rest.split(is_blank).filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        [_, r#as, name] if r#as.eq_ignore_ascii_case("as") && !name.contains('$') => {
            Some(name.to_lowercase())
        }
        _ => None,
    }
}

/// Declares the global args of one `ARG a=1 b c=$a` line: a build arg overrides a default; a
/// default is expanded with the args before it. `total` counts the bytes of the defaults
/// expanded so far: past [`ARGS_MAX`], a default is not expanded, so that `ARG B=$A$A` lines
/// cannot make the values grow without end.
fn global_args(
    rest: &str,
    escape: char,
    build_args: &BuildArgs,
    args: &mut HashMap<String, Value>,
    total: &mut usize,
) {
    for word in words(rest, escape) {
        let (key, default) = match word.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (word.clone(), None),
        };
        let value = match (build_args.get(&key), default) {
            (Some(given), _) => Value::Set(given.clone()),
            (None, Some(_)) if *total > ARGS_MAX => {
                Value::Unknown("the ARGs before it are too long".into())
            }
            (None, Some(default)) => match expand(&default, escape, args) {
                Ok(v) => {
                    *total += v.len();
                    Value::Set(v)
                }
                Err(e) => Value::Unknown(e),
            },
            (None, None) => Value::Unset,
        };
        args.insert(key, value);
    }
}

/// `text` split on blanks outside quotes and escapes (the words of an `ARG` line).
fn words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ if c == escape => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `word` as the engine's shell-like expansion makes it with the global `args`: quotes removed,
/// escapes applied, `$NAME`, `${NAME}`, `${NAME:-x}`, `${NAME-x}`, `${NAME:+x}` and `${NAME+x}`
/// replaced. Anything else with a `$` is an error, as is a platform arg without a value, a
/// result longer than [`VALUE_MAX`] or `${...}` nested deeper than [`NESTING_MAX`] (the
/// expansion recurses).
fn expand(word: &str, escape: char, args: &HashMap<String, Value>) -> Result<String, String> {
    let chars: Vec<char> = word.chars().collect();
    let mut pos = 0;
    expand_until(&chars, &mut pos, None, escape, args, 0)
}

/// Expands from `pos` up to `stop` (past it) or the end; `depth` is how deeply nested in
/// `${...}` this is.
fn expand_until(
    chars: &[char],
    pos: &mut usize,
    stop: Option<char>,
    escape: char,
    args: &HashMap<String, Value>,
    depth: usize,
) -> Result<String, String> {
    let mut out = String::new();
    while *pos < chars.len() {
        if out.len() > VALUE_MAX {
            return Err(format!("longer than {VALUE_MAX} bytes"));
        }
        let c = chars[*pos];
        *pos += 1;
        if Some(c) == stop {
            return Ok(out);
        }
        match c {
            _ if c == escape => match chars.get(*pos) {
                Some(&next) => {
                    out.push(next);
                    *pos += 1;
                }
                None => return Err("an escape at the end".into()),
            },
            '\'' => loop {
                match chars.get(*pos) {
                    Some('\'') => {
                        *pos += 1;
                        break;
                    }
                    Some(&ch) => {
                        out.push(ch);
                        *pos += 1;
                    }
                    None => return Err("an unclosed quote".into()),
                }
            },
            '"' => loop {
                match chars.get(*pos) {
                    Some('"') => {
                        *pos += 1;
                        break;
                    }
                    Some(&ch) if ch == escape => match chars.get(*pos + 1) {
                        Some(&n) if n == '"' || n == '$' || n == escape => {
                            out.push(n);
                            *pos += 2;
                        }
                        _ => {
                            out.push(ch);
                            *pos += 1;
                        }
                    },
                    Some('$') => {
                        *pos += 1;
                        out.push_str(&dollar(chars, pos, escape, args, depth)?);
                    }
                    Some(&ch) => {
                        out.push(ch);
                        *pos += 1;
                    }
                    None => return Err("an unclosed quote".into()),
                }
            },
            '$' => out.push_str(&dollar(chars, pos, escape, args, depth)?),
            _ => out.push(c),
        }
    }
    match stop {
        Some(_) => Err("an unclosed ${".into()),
        None if out.len() > VALUE_MAX => Err(format!("longer than {VALUE_MAX} bytes")),
        None => Ok(out),
    }
}

/// The expansion of what follows a `$` at `pos`.
fn dollar(
    chars: &[char],
    pos: &mut usize,
    escape: char,
    args: &HashMap<String, Value>,
    depth: usize,
) -> Result<String, String> {
    let braced = chars.get(*pos) == Some(&'{');
    if braced {
        *pos += 1;
    }
    let start = *pos;
    while chars
        .get(*pos)
        .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    {
        *pos += 1;
    }
    let name: String = chars[start..*pos].iter().collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return match chars.get(start) {
            // `$` before anything that cannot start a name is a plain `$`.
            Some(c) if !braced && !c.is_alphanumeric() && !"@*#?-$!".contains(*c) => Ok("$".into()),
            None if !braced => Ok("$".into()),
            _ => Err(format!(
                "${} is not a variable",
                chars[start..].iter().collect::<String>()
            )),
        };
    }
    let value = lookup(&name, args)?;
    if !braced {
        return Ok(value.unwrap_or_default());
    }
    let op: String = match chars.get(*pos) {
        Some('}') => {
            *pos += 1;
            return Ok(value.unwrap_or_default());
        }
        Some(':') => {
            *pos += 1;
            match chars.get(*pos) {
                Some(&c @ ('-' | '+')) => {
                    *pos += 1;
                    format!(":{c}")
                }
                _ => return Err(format!("${{{name}: with an unsupported modifier")),
            }
        }
        Some(&c @ ('-' | '+')) => {
            *pos += 1;
            c.to_string()
        }
        _ => return Err(format!("${{{name} with an unsupported modifier")),
    };
    if depth >= NESTING_MAX {
        return Err(format!("${{...}} nested more than {NESTING_MAX} deep"));
    }
    let word = expand_until(chars, pos, Some('}'), escape, args, depth + 1)?;
    let empty = value.as_deref().is_none_or(str::is_empty);
    Ok(match op.as_str() {
        ":-" if empty => word,
        "-" if value.is_none() => word,
        ":+" if !empty => word,
        "+" if value.is_some() => word,
        ":+" | "+" => String::new(),
        _ => value.unwrap_or_default(),
    })
}

/// A global arg's value: `Some` when set, `None` when unset or undeclared (the engine expands
/// those to nothing); an error when it cannot be known here (a platform arg, whose value the
/// engine decides).
fn lookup(name: &str, args: &HashMap<String, Value>) -> Result<Option<String>, String> {
    // BuildKit sets these itself, whatever a default says.
    if PLATFORM_ARGS.contains(&name) {
        return Err(format!("${name} is set by the engine"));
    }
    match args.get(name) {
        Some(Value::Set(v)) => Ok(Some(v.clone())),
        Some(Value::Unknown(why)) => Err(format!("ARG {name}: {why}")),
        _ => Ok(None),
    }
}

/// What to do with one image value.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A public image, a stack image, an earlier stage or no image.
    Allowed,
    /// An app's image in Slipway's registry: allowed if the pusher may read the app.
    App(AppName),
    Refused(Why),
}

/// Slipway's registry as the engine reaches it.
struct Registry {
    /// Its host, lower-case, without brackets.
    host: String,
    port: Option<u16>,
}

impl Registry {
    fn parse(addr: &str) -> Registry {
        let (host, port) = split_port(addr);
        Registry {
            host: host.to_ascii_lowercase(),
            port,
        }
    }
}

/// `host:port`, `[v6]:port`, `host` or `[v6]` as (host without brackets, port).
fn split_port(domain: &str) -> (&str, Option<u16>) {
    if let Some(rest) = domain.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match domain.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()),
        None => (domain, None),
    }
}

/// The earlier stages an image value may name instead of an image.
#[derive(Clone, Copy)]
struct Stages<'a> {
    /// Each stage's name (lower-case), in order; `None` for an unnamed one.
    names: &'a [Option<String>],
    /// Whether a number names a stage by its index: in `--from`, but not in `FROM`, where the
    /// engine looks it up as an image (and so as an id prefix).
    by_index: bool,
}

impl Stages<'_> {
    /// No stages: for a trigger or a directive, which run outside this file's stages.
    const NONE: Stages<'static> = Stages {
        names: &[],
        by_index: false,
    };
}

/// Whether `value` names one of the stages `names` (by name: `FROM` takes a number for an id).
fn is_stage(value: &str, names: &[Option<String>]) -> bool {
    let lower = value.to_lowercase();
    names.iter().flatten().any(|s| *s == lower)
}

/// Judges an expanded image value; `stages` are the earlier stages it may name.
fn judge(value: &str, stages: Stages, registry: &Registry) -> Verdict {
    let lower = value.to_lowercase();
    if value.is_empty() || value == "scratch" {
        return Verdict::Allowed;
    }
    if is_stage(value, stages.names) {
        return Verdict::Allowed;
    }
    if stages.by_index && lower.parse::<usize>().is_ok_and(|i| i < stages.names.len()) {
        return Verdict::Allowed;
    }
    // The engine looks a name up as an image id (or a prefix of one) when no tag matches it.
    if lower.chars().all(|c| c.is_ascii_hexdigit())
        || ["sha256:", "sha384:", "sha512:"]
            .iter()
            .any(|alg| lower.starts_with(alg))
    {
        return Verdict::Refused(Why::ById);
    }
    // The domain is the first component when it looks like one, as the engine decides.
    let Some((first, path)) = value.split_once('/') else {
        return Verdict::Allowed;
    };
    let is_domain = first.contains(['.', ':'])
        || first == "localhost"
        || first.chars().any(|c| c.is_uppercase());
    if !is_domain {
        return Verdict::Allowed;
    }
    let (host, port) = split_port(first);
    let host = host.to_lowercase();
    if !on_this_machine(&host, registry) {
        return Verdict::Allowed;
    }
    if port != registry.port {
        // Another registry here: another Slipway server sharing the engine, say.
        return Verdict::Refused(Why::OwnRegistry);
    }
    let repository = path.split('@').next().unwrap_or_default().to_lowercase();
    let repository = match repository.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo.to_owned(),
        _ => repository,
    };
    if repository.starts_with("stacks/") {
        return Verdict::Allowed;
    }
    match repository
        .strip_prefix("apps/")
        .and_then(|name| name.parse::<AppName>().ok())
    {
        Some(app) => Verdict::App(app),
        None => Verdict::Refused(Why::OwnRegistry),
    }
}

/// Whether `host` (lower-case) reaches this machine: a loopback or unspecified address in any
/// spelling the engine could resolve, `localhost` and its subdomains, or the registry's own host.
fn on_this_machine(host: &str, registry: &Registry) -> bool {
    // A name may end in the root's dot: `localhost.` is `localhost`.
    let host = host.trim_end_matches('.');
    if host == registry.host.trim_end_matches('.')
        || host == "localhost"
        || host.ends_with(".localhost")
    {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip
                    .to_ipv4()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
        // Short and numeric spellings (`127.1`, `2130706433`, `0x7f.1`) that a resolver may
        // still take for an address: never a public registry worth the doubt.
        Err(_) => {
            host.starts_with(|c: char| c.is_ascii_digit())
                && host
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == '.' || c == 'x')
        }
    }
}

/// `value` fit for a one-line message: control characters replaced, at most 200 characters.
fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect();
    if value.chars().count() > 200 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`check`] makes of `dockerfile` with `args` for a registry at `127.0.0.1:5000`: `ok`,
    /// the apps whose access decides (`apps alice,bob`), or the refusal's line and kind
    /// (`line 2: registry`, `id`, `unresolved`).
    fn verdict_with(dockerfile: &str, args: &[(&str, &str)], registry: &str) -> String {
        let args: BuildArgs = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match check(dockerfile, &args, registry).map(|i| i.apps) {
            Ok(apps) if apps.is_empty() => "ok".into(),
            Ok(apps) => {
                let mut names: Vec<String> = apps.iter().map(|a| a.app.to_string()).collect();
                names.dedup();
                format!("apps {}", names.join(","))
            }
            Err(r) => {
                let kind = match r.why {
                    Why::OwnRegistry => "registry",
                    Why::ById => "id",
                    Why::Unresolved(_) => "unresolved",
                    Why::Tangled => "tangled",
                    Why::Triggers(_) => "triggers",
                    Why::Unavailable(_) => "unavailable",
                    Why::Platform => "platform",
                };
                format!("line {}: {kind}", r.named.line)
            }
        }
    }

    fn verdict(dockerfile: &str) -> String {
        verdict_with(dockerfile, &[], "127.0.0.1:5000")
    }

    fn check_all(cases: &[(&str, &str)]) {
        for (dockerfile, expected) in cases {
            assert_eq!(verdict(dockerfile), *expected, "for:\n{dockerfile}");
        }
    }

    #[test]
    fn public_and_stack_images_pass() {
        check_all(&[
            ("FROM debian:bookworm\nRUN true\n", "ok"),
            ("FROM scratch\nCOPY app /app\n", "ok"),
            ("FROM ghcr.io/alice/app:1 AS base\n", "ok"),
            // A name without a registry host is on Docker Hub, not in Slipway's registry.
            ("FROM apps/alice:1\n", "ok"),
            ("FROM 127.0.0.1:5000/stacks/run:bookworm\n", "ok"),
            ("FROM localhost:5000/stacks/build@sha256:00\n", "ok"),
            ("FROM\n", "ok"),
            ("", "ok"),
        ]);
    }

    #[test]
    fn app_images_in_the_registry_need_access_whatever_the_address() {
        check_all(&[
            ("FROM 127.0.0.1:5000/apps/alice:abc\n", "apps alice"),
            ("FROM localhost:5000/apps/alice\n", "apps alice"),
            ("FROM LOCALHOST:5000/apps/alice\n", "apps alice"),
            ("FROM [::1]:5000/apps/alice@sha256:ab\n", "apps alice"),
            ("FROM [::ffff:127.0.0.1]:5000/apps/alice\n", "apps alice"),
            ("FROM [::]:5000/apps/alice\n", "apps alice"),
            ("FROM 0.0.0.0:5000/apps/alice\n", "apps alice"),
            ("FROM 127.0.0.2:5000/apps/alice\n", "apps alice"),
            ("FROM 127.1:5000/apps/alice\n", "apps alice"),
            ("FROM 2130706433:5000/apps/alice\n", "apps alice"),
            (
                "FROM registry.slipway.localhost:5000/apps/alice:1\n",
                "apps alice",
            ),
            ("FROM localhost.:5000/apps/alice:1\n", "apps alice"),
            (
                "FROM 127.0.0.1:5000/apps/alice AS a\nFROM localhost:5000/apps/bob\n",
                "apps alice,bob",
            ),
        ]);
        // The registry's own host, when it is not a loopback address.
        assert_eq!(
            verdict_with("FROM 10.0.0.5:5000/apps/alice\n", &[], "10.0.0.5:5000"),
            "apps alice"
        );
        assert_eq!(
            verdict_with("FROM [::1]:5000/apps/alice\n", &[], "[::1]:5000"),
            "apps alice"
        );
        assert_eq!(
            verdict_with("FROM 10.0.0.6:5000/apps/alice\n", &[], "10.0.0.5:5000"),
            "ok"
        );
    }

    #[test]
    fn the_rest_of_a_registry_on_this_machine_is_refused() {
        check_all(&[
            ("FROM 127.0.0.1:5000/other/x:1\n", "line 1: registry"),
            (
                "FROM 127.0.0.1:5000/apps/alice/deeper\n",
                "line 1: registry",
            ),
            ("FROM 127.0.0.1:5000/apps/Not_An_App\n", "line 1: registry"),
            // Another port: another Slipway server sharing the engine, say.
            (
                "FROM 127.0.0.1:5001/stacks/run:bookworm\n",
                "line 1: registry",
            ),
            ("FROM localhost/apps/alice\n", "line 1: registry"),
        ]);
    }

    #[test]
    fn images_named_by_id_alone_are_refused() {
        check_all(&[
            ("FROM 3f2a9b\n", "line 1: id"),
            ("FROM 3F2A9B\n", "line 1: id"),
            (&format!("FROM {}\n", "a".repeat(64)), "line 1: id"),
            ("FROM sha256:3f2a9b\n", "line 1: id"),
            ("FROM debian\nCOPY --from=0cafe /a /b\n", "line 2: id"),
            // A number is a stage only if that stage is done: else the engine tries it as an id.
            ("FROM debian\nCOPY --from=0 /a /b\n", "line 2: id"),
            ("FROM debian\nFROM debian\nCOPY --from=0 /a /b\n", "ok"),
            ("FROM debian\nCOPY --from=1 /a /b\n", "line 2: id"),
            // So is a name: the current stage's own is not yet one.
            ("FROM debian AS abc\nCOPY --from=abc /a /b\n", "line 2: id"),
            (
                "FROM debian AS abc\nFROM debian\nCOPY --from=ABC /a /b\n",
                "ok",
            ),
            ("FROM debian AS abc\nFROM abc\n", "ok"),
            // In FROM, a number is never a stage: the engine looks it up as an image id.
            ("FROM debian AS a\nFROM 0\n", "line 2: id"),
            ("FROM debian AS a\nFROM 1\n", "line 2: id"),
        ]);
    }

    #[test]
    fn instructions_are_read_as_the_engine_reads_them() {
        check_all(&[
            // Any case, flags before the image, a stage name after it.
            ("fRoM 127.0.0.1:5000/apps/alice\n", "apps alice"),
            (
                "FROM --platform=linux/arm64 127.0.0.1:5000/apps/alice AS build\n",
                "line 1: platform",
            ),
            // Comments are not instructions; continuations join lines, skipping the comment and
            // blank lines inside them.
            ("# FROM 127.0.0.1:5000/apps/alice\nFROM debian\n", "ok"),
            ("  # FROM 127.0.0.1:5000/apps/alice\nFROM debian\n", "ok"),
            (
                "FROM \\\n  # a comment\n\n   127.0.0.1:5000/apps/alice\n",
                "apps alice",
            ),
            ("FROM \\  \t\n127.0.0.1:5000/apps/alice\n", "apps alice"),
            (
                "FROM debian\nRUN echo \\\n  hi\nFROM localhost:5000/x\n",
                "line 4: registry",
            ),
            // A byte order mark and CRLF line ends.
            ("\u{feff}FROM 127.0.0.1:5000/apps/alice\r\n", "apps alice"),
            // Quotes and escapes are resolved.
            ("FROM \"127.0.0.1:5000/apps/alice\"\n", "apps alice"),
            ("FROM '127.0.0.1:5000/apps/alice'\n", "apps alice"),
            ("FROM 127.0.0.1:5000/apps/ali\\ce\n", "apps alice"),
        ]);
    }

    #[test]
    fn global_args_are_expanded_in_from() {
        check_all(&[
            (
                "ARG BASE=127.0.0.1:5000/apps/alice\nFROM ${BASE}\n",
                "apps alice",
            ),
            (
                "ARG BASE=127.0.0.1:5000/apps/alice\nFROM $BASE:1\n",
                "apps alice",
            ),
            (
                "ARG R=127.0.0.1:5000 A=alice\nFROM $R/apps/$A\n",
                "apps alice",
            ),
            (
                "ARG R=localhost:5000\nARG IMG=\"$R/apps/alice\"\nFROM ${IMG}\n",
                "apps alice",
            ),
            (
                "ARG X\nFROM ${X:-127.0.0.1:5000/apps/alice}\n",
                "apps alice",
            ),
            ("FROM ${X-127.0.0.1:5000/apps/alice}\n", "apps alice"),
            (
                "ARG X=\nFROM ${X:-127.0.0.1:5000/apps/alice}\n",
                "apps alice",
            ),
            ("ARG X=\nFROM debian${X-localhost:5000/x}\n", "ok"),
            ("ARG X=debian\nFROM ${X:-127.0.0.1:5000/apps/alice}\n", "ok"),
            (
                "ARG X=1\nFROM ${X:+127.0.0.1:5000/apps/alice}\n",
                "apps alice",
            ),
            ("FROM debian${X:+127.0.0.1:5000/apps/alice}\n", "ok"),
            // A `$` that starts no variable is itself.
            ("FROM debian$\n", "ok"),
            // Single quotes and escapes keep a `$`.
            ("ARG X=localhost:5000/x\nFROM '$X'\n", "ok"),
            // An ARG after the first FROM belongs to a stage: FROM never sees it.
            (
                "FROM debian\nARG B=127.0.0.1:5000/apps/alice\nFROM $B\n",
                "ok",
            ),
            // What cannot be evaluated before the build is refused.
            (
                "ARG X=a\nFROM ${X#a}127.0.0.1:5000/apps/alice\n",
                "line 2: unresolved",
            ),
            ("FROM ${X/a/b}\n", "line 1: unresolved"),
            ("FROM $1\n", "line 1: unresolved"),
            ("FROM ${X\n", "line 1: unresolved"),
            ("FROM \"debian\n", "line 1: unresolved"),
            (
                "FROM localhost:5000/apps/$TARGETARCH\n",
                "line 1: unresolved",
            ),
            ("ARG TARGETARCH\nFROM x/$TARGETARCH\n", "line 2: unresolved"),
            (
                "ARG TARGETARCH=amd64\nFROM x/$TARGETARCH\n",
                "line 2: unresolved",
            ),
            ("ARG X=${Y%z}\nFROM $X\n", "line 2: unresolved"),
            // An unevaluable ARG that FROM does not use is fine.
            ("ARG X=${Y%z}\nFROM debian\n", "ok"),
        ]);
    }

    #[test]
    fn expansions_are_bounded_in_depth_and_size() {
        // Nesting recurses: deep enough, it would overflow the stack.
        let deep = format!("FROM {}x{}\n", "${X:-".repeat(100_000), "}".repeat(100_000));
        assert_eq!(verdict(&deep), "line 1: unresolved");
        let nested = format!(
            "FROM {}debian{}\n",
            "${X:-".repeat(NESTING_MAX),
            "}".repeat(NESTING_MAX)
        );
        assert_eq!(verdict(&nested), "ok");
        // Each ARG doubling the last would need 2^64 bytes.
        let mut doubling = "ARG A0=aaaaaaaa\n".to_owned();
        for i in 1..64 {
            doubling.push_str(&format!("ARG A{i}=$A{}$A{}\n", i - 1, i - 1));
        }
        let started = std::time::Instant::now();
        assert_eq!(verdict(&format!("{doubling}FROM debian\n")), "ok");
        assert_eq!(
            verdict(&format!("{doubling}FROM $A63\n")),
            "line 65: unresolved"
        );
        // So would many copies of a long one.
        let mut copies = format!("ARG A={}\n", "a".repeat(VALUE_MAX));
        copies.push_str(&"ARG B=$A\n".repeat(10_000));
        assert_eq!(
            verdict(&format!("{copies}FROM $B\n")),
            "line 10002: unresolved"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn build_args_override_arg_defaults() {
        let dockerfile = "ARG BASE=debian\nFROM $BASE\n";
        assert_eq!(verdict(dockerfile), "ok");
        let args = [("BASE", "127.0.0.1:5000/apps/bob:1")];
        assert_eq!(
            verdict_with(dockerfile, &args, "127.0.0.1:5000"),
            "apps bob"
        );
        // Used as given, not expanded again.
        let args = [("BASE", "$X")];
        assert_eq!(verdict_with(dockerfile, &args, "127.0.0.1:5000"), "ok");
        // BuildKit takes its frontend image from this build arg.
        let args = [("BUILDKIT_SYNTAX", "localhost:5000/apps/alice")];
        assert_eq!(
            verdict_with("FROM debian\n", &args, "127.0.0.1:5000"),
            "apps alice"
        );
    }

    #[test]
    fn images_in_flags_and_triggers_are_checked() {
        check_all(&[
            (
                "FROM debian\nCOPY --from=127.0.0.1:5000/apps/alice:1 /a /b\n",
                "apps alice",
            ),
            (
                "FROM debian\nCOPY --chown=1000 --from=\"127.0.0.1:5000/apps/alice\" [\"/a\", \"/b\"]\n",
                "apps alice",
            ),
            (
                "FROM debian\ncopy --FROM=localhost:5000/x /a /b\n",
                "line 2: registry",
            ),
            ("FROM debian\nADD --from=3f2a /a /b\n", "line 2: id"),
            (
                "FROM debian\nRUN --mount=type=bind,from=127.0.0.1:5000/apps/alice,target=/x true\n",
                "apps alice",
            ),
            (
                "FROM debian\nRUN --mount=\"type=bind,\\\"from=localhost:5000/x\\\"\" true\n",
                "line 2: registry",
            ),
            (
                "FROM debian AS a\nFROM debian\nRUN --mount=from=a,target=/x true\n",
                "ok",
            ),
            (
                "FROM debian\nRUN --mount=type=cache,target=/root/.cache true\n",
                "ok",
            ),
            (
                "FROM debian\nCOPY --from=$IMG /a /b\n",
                "line 2: unresolved",
            ),
            // After `--`, or after the first word, nothing is a flag.
            ("FROM debian\nRUN -- --from=localhost:5000/x\n", "ok"),
            ("FROM debian\nRUN echo --from=localhost:5000/x\n", "ok"),
            // A trigger runs in a later build, where these stages mean nothing.
            (
                "FROM debian\nONBUILD COPY --from=127.0.0.1:5000/apps/alice / /\n",
                "apps alice",
            ),
            (
                "FROM debian AS a\nFROM debian\nONBUILD COPY --from=0 / /\n",
                "line 3: id",
            ),
            (
                "FROM debian\nonbuild from localhost:5000/x\n",
                "line 2: registry",
            ),
        ]);
    }

    /// The images the stages of `dockerfile` build on, as [`check`] returns them.
    fn bases(dockerfile: &str) -> Vec<String> {
        let images = check(dockerfile, &BuildArgs::new(), "127.0.0.1:5000").unwrap();
        images.bases.into_iter().map(|b| b.reference).collect()
    }

    #[test]
    fn the_images_stages_build_on_are_returned_expanded_and_once() {
        assert_eq!(bases("FROM debian:bookworm\n"), ["debian:bookworm"]);
        assert_eq!(
            bases("ARG V=3.12\nFROM python:$V AS build\nFROM build\nFROM Build\nFROM scratch\n"),
            ["python:3.12"]
        );
        // A later stage's name is not a stage yet: the engine looks it up as an image.
        assert_eq!(
            bases("FROM later\nFROM debian AS later\n"),
            ["later", "debian"]
        );
        assert_eq!(
            bases("FROM debian\nFROM debian\nFROM 127.0.0.1:5000/apps/alice:1\n"),
            ["debian", "127.0.0.1:5000/apps/alice:1"]
        );
        // What COPY --from names is copied from, not built on: its triggers do not run.
        assert_eq!(bases("FROM debian\nCOPY --from=alpine / /\n"), ["debian"]);
        // A FROM read only in case another parser starts an instruction there counts too,
        // unless it names a stage.
        assert_eq!(
            bases("FROM debian AS a\nRUN <<EOF\nx \\\n#\nFROM alpine\nFROM a\nEOF\n"),
            ["debian", "alpine"]
        );
        let images = check("FROM debian\n", &BuildArgs::new(), "127.0.0.1:5000").unwrap();
        assert_eq!(
            images.bases[0].named.to_string(),
            "Dockerfile line 1: FROM debian"
        );
    }

    #[test]
    fn a_base_image_for_another_platform_is_refused() {
        if std::env::consts::ARCH == "x86_64" {
            check_all(&[("FROM --platform=linux/amd64 debian\n", "ok")]);
        }
        // The engine would pull it during the build, unread, if what it holds is of another.
        check_all(&[
            ("FROM --platform=linux/arm64 debian\n", "line 1: platform"),
            ("FROM --platform=windows/amd64 debian\n", "line 1: platform"),
            // The engine's own platform, however it is spelled, is the image it holds.
            ("FROM --platform=$BUILDPLATFORM golang AS b\n", "ok"),
            ("FROM --PLATFORM=${TARGETPLATFORM} golang\n", "ok"),
            // Unless an ARG gives the platform arg a value of its own.
            (
                "ARG BUILDPLATFORM=linux/arm64\nFROM --platform=$BUILDPLATFORM golang\n",
                "line 2: platform",
            ),
            // Not an image: nothing to pull.
            (
                "FROM debian AS base\nFROM --platform=linux/amd64 base\n",
                "ok",
            ),
            ("FROM --platform=linux/amd64 scratch\n", "ok"),
        ]);
    }

    #[test]
    fn the_images_copied_or_mounted_from_are_returned_once() {
        let sources = |dockerfile: &str| -> Vec<String> {
            let images = check(dockerfile, &BuildArgs::new(), "127.0.0.1:5000").unwrap();
            images.sources.into_iter().map(|b| b.reference).collect()
        };
        assert_eq!(
            sources(
                "FROM debian AS a\nFROM debian\nCOPY --from=a / /\nCOPY --from=0 / /\n\
                 COPY --from=alpine / /\nRUN --mount=from=busybox,target=/b true\n\
                 COPY --from=alpine / /\nCOPY --from=debian / /\n"
            ),
            ["alpine", "busybox"]
        );
        // A trigger's images are used by a later build, not this one.
        assert!(sources("FROM debian\nONBUILD COPY --from=alpine / /\n").is_empty());
        // Read only in case another parser starts an instruction there: a stage's name is the
        // stage.
        assert_eq!(
            sources(
                "FROM debian AS build\nRUN <<EOF\nx \\\n#\nCOPY --from=build / /\nCOPY --from=alpine / /\nEOF\n"
            ),
            ["alpine"]
        );
    }

    #[test]
    fn triggers_that_name_other_images_are_found() {
        let found = |triggers: &[&str]| {
            let triggers: Vec<String> = triggers.iter().map(|t| t.to_string()).collect();
            naming_trigger(&triggers).map(str::to_owned)
        };
        assert_eq!(found(&[]), None);
        assert_eq!(
            found(&[
                "RUN echo hi",
                "COPY . /app",
                "ADD https://x/y /y",
                "ENV A=from"
            ]),
            None
        );
        for trigger in [
            "COPY --from=127.0.0.1:5000/apps/alice:1 / /stolen",
            "copy --FROM=x / /",
            "ADD --chown=1 --from=x / /",
            "RUN --mount=type=bind,from=x,target=/x cat /x/secret",
            "RUN --MOUNT=from=x true",
            "COPY \"--from=x\" / /",
            "COPY --fr\\om=x / /",
            "COPY --fr\\\nom=x / /",
            "COPY '--fr'om=x / /",
            "COPY `--from`=x / /",
            // Conservative: a mention is enough.
            "RUN echo --from",
        ] {
            let triggers = ["RUN true", trigger];
            assert_eq!(found(&triggers).as_deref(), Some(trigger), "{trigger:?}");
        }
    }

    #[test]
    fn refusals_of_base_images_are_one_line() {
        let images = check(
            "FROM example.org/base:1\n",
            &BuildArgs::new(),
            "127.0.0.1:5000",
        )
        .unwrap();
        let base = &images.bases[0];
        assert_eq!(
            Refusal::triggers(base, "COPY --from=127.0.0.1:5000/apps/alice:1 / /x").to_string(),
            "Dockerfile line 1: FROM example.org/base:1 has ONBUILD triggers that name other \
             images (COPY --from=127.0.0.1:5000/apps/alice:1 / /x); Slipway does not build on \
             those"
        );
        let shown = Refusal::triggers(
            base,
            &format!("COPY\n--from=x\u{1b}[2J {}", "a".repeat(500)),
        )
        .to_string();
        assert!(!shown.contains(['\n', '\u{1b}']), "{shown:?}");
        assert!(shown.len() < 400, "{shown}");
        assert_eq!(
            Refusal::unavailable(base, "pulling image example.org/base:1: not found").to_string(),
            "Dockerfile line 1: FROM example.org/base:1 is not on this server and could not be \
             pulled without a login (pulling image example.org/base:1: not found)"
        );
    }

    #[test]
    fn directives_are_read_every_way_an_engine_may() {
        check_all(&[
            (
                "# syntax=127.0.0.1:5000/apps/alice\nFROM debian\n",
                "apps alice",
            ),
            ("#syntax = docker/dockerfile:1\nFROM debian\n", "ok"),
            // A directive after the first instruction is a comment.
            ("FROM debian\n# syntax=localhost:5000/x\n", "ok"),
            // With ` as the escape, a trailing \ continues nothing (and a trailing ` does).
            (
                "# escape=`\nFROM debian\nRUN echo `\n  hi\nFROM localhost:5000/x\n",
                "line 5: registry",
            ),
            (
                "# escape=`\nFROM debian\nRUN dir c:\\\nFROM localhost:5000/x\n",
                "line 4: registry",
            ),
            // An older engine ignores an escape directive after another directive; read it
            // both ways.
            (
                "# syntax=docker/dockerfile:1\n# escape=`\nFROM debian\nRUN dir c:\\\nFROM localhost:5000/x\n",
                "line 5: registry",
            ),
        ]);
    }

    #[test]
    fn a_line_another_parser_starts_an_instruction_on_is_checked_too() {
        // A newer engine reads the heredoc's end `EOF\` and starts a new instruction after it;
        // joined as a continuation, that FROM would hide.
        check_all(&[
            (
                "FROM debian\nRUN <<'EOF\\'\nx\nEOF\\\nFROM 127.0.0.1:5000/apps/alice\n",
                "apps alice",
            ),
            (
                "FROM debian\nRUN <<EOF\nx \\\n#\nFROM localhost:5000/x\nEOF\n",
                "line 5: registry",
            ),
            (
                "FROM debian\nRUN echo \\\n  COPY --from=localhost:5000/x\n",
                "line 3: registry",
            ),
        ]);
    }

    #[test]
    fn endless_continuations_cost_little_and_are_refused() {
        let started = std::time::Instant::now();
        for repeated in ["COPY \\\n", " \\\n", "RUN a \\\n"] {
            let text = format!("FROM debian\nRUN true \\\n{}", repeated.repeat(50_000));
            let verdict = verdict(&text);
            assert!(verdict.ends_with(": tangled"), "{repeated:?}: {verdict}");
        }
        // An ordinary long RUN is not tangled.
        let text = format!(
            "FROM debian\nRUN true \\\n{}",
            "  && make \\\n".repeat(5_000)
        );
        assert_eq!(verdict(&text), "ok");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn the_refusal_is_one_line_saying_where_and_what_to_do() {
        let args = BuildArgs::new();
        let refusal = check(
            "FROM debian\nCOPY --from=127.0.0.1:5000/other/x / /\n",
            &args,
            "127.0.0.1:5000",
        )
        .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "Dockerfile line 2: COPY --from=127.0.0.1:5000/other/x is an image in Slipway's \
             registry that this push may not use; build on a stacks/ image, an app you have \
             access to, or a public image"
        );
        let apps = check(
            "FROM 127.0.0.1:5000/apps/alice:1\r\n",
            &args,
            "127.0.0.1:5000",
        )
        .unwrap()
        .apps;
        assert_eq!(
            Refusal::no_access(&apps[0]).to_string(),
            "Dockerfile line 1: FROM 127.0.0.1:5000/apps/alice:1 is an image in Slipway's \
             registry that this push may not use; build on a stacks/ image, an app you have \
             access to, or a public image"
        );
        let refusal = check("FROM 3f2a\n", &args, "127.0.0.1:5000").unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "Dockerfile line 1: FROM 3f2a names an image by its id alone, which could be any \
             image on this server; name it by repository and tag"
        );
        let refusal = check("FROM ${X%y}\n", &args, "127.0.0.1:5000").unwrap_err();
        assert!(
            refusal.to_string().starts_with(
                "Dockerfile line 1: FROM ${X%y} cannot be resolved before the build ("
            ),
            "{refusal}"
        );
        // Control characters never reach the pusher's terminal.
        let refusal = check("FROM localhost:5000/x\u{1b}[2J\n", &args, "127.0.0.1:5000");
        let refusal = refusal.unwrap_err().to_string();
        assert!(
            refusal.contains("FROM localhost:5000/x?[2J is"),
            "{refusal}"
        );
        // Nor do they through why a value cannot be resolved.
        let refusal = check("FROM ${\u{1b}[2J}\n", &args, "127.0.0.1:5000");
        let refusal = refusal.unwrap_err().to_string();
        assert!(!refusal.contains('\u{1b}'), "{refusal:?}");
    }
}
