//! `calyx lease show`: what a lease allows, who signed it, and what a reviewer should notice.
//!
//! The report is built by pure functions from the lease bytes, the trust policy and an
//! injected clock; the risk list ([`risks`]) is a table-tested rule set.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;
use time::OffsetDateTime;

use crate::lease::envelope::{self, Envelope};
use crate::lease::model::{CommandRule, LEASE_PAYLOAD_TYPE, Lease, Network};
use crate::lease::trust::{Role, TrustPolicy};
use crate::lease::units::{format_duration_secs, format_size_bytes};
use crate::lease::verify::{self, VerifyContext, VerifyError};

/// Lifetimes beyond a day deserve a second look, whatever the policy allows.
const LONG_LIFETIME_SECS: u64 = 86_400;

/// Programs that run arbitrary code given as arguments or input.
const INTERPRETERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox", "env", "python",
    "python3", "perl", "ruby", "node", "php", "lua", "tclsh", "awk", "gawk",
];

/// One signature as shown.
#[derive(Debug, Clone)]
pub struct Cosigner {
    /// 1-based position.
    pub number: usize,
    /// The keyid it claims.
    pub keyid: String,
    /// Its id and role in the policy, when the policy knows the key.
    pub known: Option<(String, Role)>,
    /// Whether it verifies (only known keys can be checked).
    pub valid: Option<bool>,
}

/// Everything `show` prints.
#[derive(Debug, Clone)]
pub struct Report {
    /// The payload as parsed (authenticated or not: see `verification`).
    pub lease: Lease,
    /// Hex SHA-256 of the payload bytes.
    pub payload_sha256: String,
    /// The signatures.
    pub cosigners: Vec<Cosigner>,
    /// The policy used, if any.
    pub policy: Option<PathBuf>,
    /// `Ok` when the lease verifies now, else the refusal; `None` without a policy.
    pub verification: Option<Result<(), String>>,
    /// What a reviewer should notice.
    pub risks: Vec<String>,
}

/// Builds the report. A lease whose envelope or payload does not parse is an error: there is
/// nothing to show.
pub fn build_report(
    raw: &[u8],
    policy: Option<&TrustPolicy>,
    policy_path: &Path,
    ctx: &VerifyContext,
) -> Result<Report, VerifyError> {
    let env = Envelope::from_json(raw)?;
    if env.payload_type != LEASE_PAYLOAD_TYPE {
        return Err(VerifyError::PayloadType {
            found: env.payload_type,
        });
    }
    let body = env.payload_bytes()?;
    let lease = verify::parse_payload(&body)?;
    let cosigners = env
        .signatures
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let key = policy.and_then(|p| p.key_by_keyid(&s.keyid));
            let valid = key.map(|k| {
                envelope::decode_signature(&s.sig, i + 1).is_ok_and(|sig| {
                    envelope::verify_signature(&k.public_key, &env.payload_type, &body, &sig)
                })
            });
            Cosigner {
                number: i + 1,
                keyid: s.keyid.clone(),
                known: key.map(|k| (k.id.clone(), k.role)),
                valid,
            }
        })
        .collect();
    let verification = policy.map(|p| {
        verify::verify_envelope_bytes(raw, p, ctx)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    use sha2::Digest as _;
    Ok(Report {
        risks: risks(&lease),
        payload_sha256: hex::encode(sha2::Sha256::digest(&body)),
        lease,
        cosigners,
        policy: policy.map(|_| policy_path.to_owned()),
        verification,
    })
}

/// True when `a` is `b` or lies under it (component-wise, so `/srv2` is not under `/srv`).
fn within(a: &Path, b: &Path) -> bool {
    a.starts_with(b)
}

/// The risks a reviewer should weigh before cosigning.
pub fn risks(lease: &Lease) -> Vec<String> {
    let mut out = Vec::new();
    for x in &lease.paths.exec {
        if let Some(w) = lease
            .paths
            .write
            .iter()
            .find(|w| within(x, w) || within(w, x))
        {
            out.push(format!(
                "{} is executable and {} is writable: the payload can write a program and run it",
                x.display(),
                w.display()
            ));
        }
    }
    for w in &lease.paths.write {
        let top = [
            "/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/boot", "/root", "/home",
        ];
        if top.iter().any(|t| w == Path::new(t)) {
            out.push(format!("writes to the system path {}", w.display()));
        }
    }
    for (i, c) in lease.commands.iter().enumerate() {
        let name = c
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = name.trim_end_matches(|ch: char| ch.is_ascii_digit() || ch == '.');
        if INTERPRETERS.contains(&name.as_str()) || INTERPRETERS.contains(&base) {
            out.push(format!(
                "commands[{i}] runs {name}, an interpreter: it can do anything the paths and limits allow"
            ));
        }
        if c.args.last().is_some_and(|a| a == "*") {
            out.push(format!(
                "commands[{i}] ({}) accepts any further arguments",
                command_text(c)
            ));
        }
    }
    if lease.network == Network::Loopback {
        out.push(
            "network loopback: the payload may open IP sockets (on its private loopback only)"
                .to_owned(),
        );
    }
    let lifetime =
        u64::try_from((lease.expires_at - lease.not_before).whole_seconds()).unwrap_or(0);
    if lifetime > LONG_LIFETIME_SECS {
        out.push(format!("long lifetime: {}", format_duration_secs(lifetime)));
    }
    if lease.max_uses > 1 {
        out.push(format!("reusable: authorizes {} runs", lease.max_uses));
    }
    let l = &lease.limits;
    if l.timeout_secs.is_none() && l.memory_bytes.is_none() && l.pids.is_none() && l.cpu.is_none() {
        out.push(
            "no limits: time, memory, processes and CPU are bounded only by the profile's defaults"
                .to_owned(),
        );
    }
    for name in &lease.env.allow {
        if name.starts_with("LD_") || name == "PATH" || name.ends_with("PATH") {
            out.push(format!(
                "passes {name} through from the caller, which can change what runs"
            ));
        }
    }
    out
}

/// A command rule as a shell-like string, quoting arguments that need it.
pub fn command_text(c: &CommandRule) -> String {
    let mut s = quote(&c.path.to_string_lossy());
    for a in &c.args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.,:=+@%*".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn short(keyid: &str) -> String {
    let head: String = keyid.chars().take(8).collect();
    format!("{head}…")
}

/// `expires in 59m`, `expired 3m ago`, `not valid for another 2h`.
pub fn relative_window(lease: &Lease, now: OffsetDateTime) -> String {
    let secs = |d: time::Duration| u64::try_from(d.whole_seconds()).unwrap_or(0);
    if now < lease.not_before {
        format!(
            "not valid for another {}",
            format_duration_secs(secs(lease.not_before - now))
        )
    } else if now >= lease.expires_at {
        format!(
            "expired {} ago",
            format_duration_secs(secs(now - lease.expires_at))
        )
    } else {
        format!(
            "expires in {}",
            format_duration_secs(secs(lease.expires_at - now))
        )
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human summary.
pub fn report_text(r: &Report, ctx: &VerifyContext) -> String {
    let l = &r.lease;
    let mut o = String::new();
    let _ = writeln!(o, "lease {} for intent {}", l.lease_id, l.intent_id);
    let _ = writeln!(
        o,
        "  issuer {}, subject {}, profile {}, risk {}, max uses {}",
        l.issuer,
        l.subject,
        l.profile,
        serde_json::to_value(l.risk)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        l.max_uses
    );
    let _ = writeln!(
        o,
        "  valid {} to {} ({})",
        rfc3339(l.not_before),
        rfc3339(l.expires_at),
        relative_window(l, ctx.now)
    );
    let hosts = if l.hosts.is_empty() {
        "any".to_owned()
    } else {
        l.hosts.join(", ")
    };
    let _ = writeln!(o, "  hosts: {hosts}");
    let _ = writeln!(o, "allows:");
    for c in &l.commands {
        let digest = c
            .sha256
            .as_deref()
            .map(|d| format!(" (sha256 {})", short(d)))
            .unwrap_or_default();
        let _ = writeln!(o, "  run   {}{digest}", command_text(c));
    }
    for (what, paths) in [
        ("read", &l.paths.read),
        ("write", &l.paths.write),
        ("exec", &l.paths.exec),
    ] {
        if !paths.is_empty() {
            let _ = writeln!(o, "  {what:<5} {}", list(paths));
        }
    }
    if !l.env.allow.is_empty() {
        let _ = writeln!(o, "  env   pass {}", l.env.allow.join(", "));
    }
    for (k, v) in &l.env.set {
        let _ = writeln!(o, "  env   set {k}={v}");
    }
    let net = match l.network {
        Network::None => "none",
        Network::Loopback => "loopback",
    };
    let _ = writeln!(o, "  net   {net}");
    let mut limits = Vec::new();
    if let Some(t) = l.limits.timeout_secs {
        limits.push(format!("timeout {}", format_duration_secs(t)));
    }
    if let Some(m) = l.limits.memory_bytes {
        limits.push(format!("memory {}", format_size_bytes(m)));
    }
    if let Some(p) = l.limits.pids {
        limits.push(format!("pids {p}"));
    }
    if let Some(c) = l.limits.cpu {
        limits.push(format!("cpu {c}"));
    }
    let limits = if limits.is_empty() {
        "profile defaults".to_owned()
    } else {
        limits.join(", ")
    };
    let _ = writeln!(o, "  limit {limits}");
    if !l.artifacts.paths.is_empty() {
        let cap = l
            .artifacts
            .max_bytes
            .map(|b| format!(" (max {})", format_size_bytes(b)))
            .unwrap_or_default();
        let _ = writeln!(o, "  keep  {}{cap}", list(&l.artifacts.paths));
    }
    let _ = writeln!(o, "cosigners:");
    if r.cosigners.is_empty() {
        let _ = writeln!(o, "  none (unsigned)");
    }
    for c in &r.cosigners {
        let who = match &c.known {
            Some((id, role)) => format!("{id} ({role})"),
            None => "unknown key".to_owned(),
        };
        let state = match c.valid {
            Some(true) => "signature valid",
            Some(false) => "BAD SIGNATURE",
            None => "not checked",
        };
        let _ = writeln!(o, "  {}. {who} {} {state}", c.number, short(&c.keyid));
    }
    let verdict = match (&r.verification, &r.policy) {
        (Some(Ok(())), Some(p)) => format!("OK under {}", p.display()),
        (Some(Err(reason)), Some(p)) => format!("REFUSED under {}: {reason}", p.display()),
        _ => "not checked: no trust policy (pass --trust POLICY)".to_owned(),
    };
    let _ = writeln!(o, "verification: {verdict}");
    if r.risks.is_empty() {
        let _ = writeln!(o, "risks: none noticed");
    } else {
        let _ = writeln!(o, "risks:");
        for risk in &r.risks {
            let _ = writeln!(o, "  - {risk}");
        }
    }
    o
}

/// The machine form.
pub fn report_json(r: &Report) -> serde_json::Value {
    let cosigners: Vec<_> = r
        .cosigners
        .iter()
        .map(|c| {
            json!({
                "number": c.number,
                "keyid": c.keyid,
                "id": c.known.as_ref().map(|k| k.0.clone()),
                "role": c.known.as_ref().map(|k| k.1),
                "signature_valid": c.valid,
            })
        })
        .collect();
    let verification = match &r.verification {
        Some(Ok(())) => json!({"checked": true, "ok": true}),
        Some(Err(reason)) => json!({"checked": true, "ok": false, "reason": reason}),
        None => json!({"checked": false}),
    };
    json!({
        "lease": r.lease,
        "payload_sha256": r.payload_sha256,
        "cosigners": cosigners,
        "trust_policy": r.policy,
        "verification": verification,
        "risks": r.risks,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(extra: serde_json::Value) -> Lease {
        let mut v = json!({
            "version": 1, "lease_id": "L", "intent_id": "I", "issuer": "i", "subject": "s",
            "issued_at": "2030-01-01T00:00:00Z", "not_before": "2030-01-01T00:00:00Z",
            "expires_at": "2030-01-01T01:00:00Z",
            "commands": [{"path": "/usr/bin/make", "args": ["test"]}],
            "limits": {"timeout_secs": 60}
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn risks_as_a_table() {
        let cases: Vec<(serde_json::Value, &[&str])> = vec![
            (json!({}), &[]),
            (
                json!({"paths": {"write": ["/srv/app"], "exec": ["/srv/app/bin"]}}),
                &[
                    "/srv/app/bin is executable and /srv/app is writable: the payload can write a program and run it",
                ],
            ),
            (
                json!({"paths": {"write": ["/srv/app"], "exec": ["/srv/app2"]}}),
                &[],
            ),
            (
                json!({"paths": {"write": ["/etc"]}}),
                &["writes to the system path /etc"],
            ),
            (
                json!({"commands": [{"path": "/bin/sh", "args": ["-c", "*"]}]}),
                &[
                    "commands[0] runs sh, an interpreter: it can do anything the paths and limits allow",
                    "commands[0] (/bin/sh -c *) accepts any further arguments",
                ],
            ),
            (
                json!({"commands": [{"path": "/usr/bin/python3.12"}]}),
                &[
                    "commands[0] runs python3.12, an interpreter: it can do anything the paths and limits allow",
                ],
            ),
            (
                json!({"network": "loopback"}),
                &[
                    "network loopback: the payload may open IP sockets (on its private loopback only)",
                ],
            ),
            (
                json!({"expires_at": "2030-01-03T00:00:00Z"}),
                &["long lifetime: 48h"],
            ),
            (json!({"max_uses": 5}), &["reusable: authorizes 5 runs"]),
            (
                json!({"limits": {}}),
                &[
                    "no limits: time, memory, processes and CPU are bounded only by the profile's defaults",
                ],
            ),
            (
                json!({"env": {"allow": ["LD_PRELOAD", "HOME"]}}),
                &["passes LD_PRELOAD through from the caller, which can change what runs"],
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(risks(&lease(extra.clone())), want, "{extra}");
        }
    }

    #[test]
    fn relative_window_reads_naturally() {
        let l = lease(json!({}));
        use time::macros::datetime;
        assert_eq!(
            relative_window(&l, datetime!(2029-12-31 22:00:00 UTC)),
            "not valid for another 2h"
        );
        assert_eq!(
            relative_window(&l, datetime!(2030-01-01 00:01:00 UTC)),
            "expires in 59m"
        );
        assert_eq!(
            relative_window(&l, datetime!(2030-01-01 01:03:00 UTC)),
            "expired 3m ago"
        );
    }

    #[test]
    fn commands_print_with_quotes_where_needed() {
        let c = CommandRule {
            path: PathBuf::from("/bin/echo"),
            args: vec!["a b".into(), "it's".into(), "*".into()],
            sha256: None,
        };
        assert_eq!(command_text(&c), "/bin/echo 'a b' 'it'\\''s' *");
    }
}
