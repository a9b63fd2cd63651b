//! Secret redaction for command lines. A command line is tenant-controlled and often carries tokens;
//! everything that looks like a credential is replaced by `[REDACTED]` before it leaves this module.

const REDACTED: &str = "[REDACTED]";

/// Flag names (without dashes, lower case, `-` and `_` equivalent) whose value is a secret.
const SECRET_FLAGS: &[&str] = &[
    "token",
    "api-key",
    "apikey",
    "api-token",
    "access-token",
    "auth-token",
    "hf-token",
    "password",
    "passwd",
    "pass",
    "secret",
    "secret-key",
    "client-secret",
    "access-key",
    "aws-secret-access-key",
    "private-key",
    "credentials",
    "auth",
    "authorization",
    "bearer",
    "wandb-api-key",
    "openai-api-key",
    "key",
];

/// Value prefixes of well-known credential formats.
const SECRET_PREFIXES: &[(&str, usize)] = &[
    ("hf_", 20),  // Hugging Face tokens
    ("ghp_", 20), // GitHub personal tokens
    ("gho_", 20), // GitHub OAuth tokens
    ("github_pat_", 20),
    ("glpat-", 15), // GitLab
    ("sk-", 20),    // OpenAI-style keys
    ("xoxb-", 15),  // Slack
    ("xoxp-", 15),
    ("AKIA", 16), // AWS access key ids
    ("ASIA", 16),
    ("eyJ", 30), // JWTs
];

fn is_secret_flag(name: &str) -> bool {
    let n = name.trim_start_matches('-').to_ascii_lowercase().replace('_', "-");
    SECRET_FLAGS.iter().any(|f| n == *f || n.ends_with(&format!("-{f}")) && !n.ends_with("-keyword"))
}

/// Redacts one word that is not a flag's separate value.
fn redact_word(word: &str) -> String {
    // URLs carry `=` in their query; they are values, not KEY=value pairs.
    let is_url = word.find("://").is_some_and(|i| word.find('=').is_none_or(|e| i < e));
    // --flag=value and KEY=value
    if !is_url && let Some((k, v)) = word.split_once('=') {
        if is_secret_flag(k) && !v.is_empty() {
            return format!("{k}={REDACTED}");
        }
        return format!("{k}={}", redact_value(v));
    }
    redact_value(word)
}

fn looks_like_token(s: &str) -> bool {
    SECRET_PREFIXES.iter().any(|(p, min_tail)| {
        s.strip_prefix(p).is_some_and(|tail| {
            tail.len() >= *min_tail && tail.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    })
}

/// Redacts credentials inside a value: URL userinfo passwords, known token formats, `Bearer x`.
fn redact_value(v: &str) -> String {
    if looks_like_token(v) {
        return REDACTED.into();
    }
    // scheme://user:password@host -> scheme://user:[REDACTED]@host
    if let Some(scheme_end) = v.find("://") {
        let rest = &v[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && at > 0
        {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let shown_user = if looks_like_token(user) { REDACTED } else { user };
            return format!("{}{shown_user}:{REDACTED}{}", &v[..scheme_end + 3], &rest[at..]);
        }
    }
    // Query strings: ?token=...&x=1
    if let Some(q) = v.find('?') {
        let (base, query) = v.split_at(q + 1);
        let parts: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if is_secret_flag(k) || k.eq_ignore_ascii_case("sig") => {
                    format!("{k}={REDACTED}")
                }
                _ => kv.to_string(),
            })
            .collect();
        return format!("{base}{}", parts.join("&"));
    }
    v.to_string()
}

/// Redacts secrets in an argument vector and joins it with spaces, as a reviewer would read it.
pub fn redact_argv(argv: &[String]) -> String {
    let mut out = Vec::with_capacity(argv.len());
    let mut next_is_secret = false;
    for arg in argv {
        if next_is_secret {
            out.push(REDACTED.to_string());
            next_is_secret = false;
            continue;
        }
        if arg.eq_ignore_ascii_case("bearer") || arg.eq_ignore_ascii_case("authorization:") {
            out.push(arg.clone());
            next_is_secret = true;
            continue;
        }
        if arg.starts_with('-') && !arg.contains('=') && is_secret_flag(arg) {
            out.push(arg.clone());
            next_is_secret = true;
            continue;
        }
        // Header-style "Authorization: Bearer xyz" in one argument.
        let lower = arg.to_ascii_lowercase();
        if let Some(i) = lower.find("bearer ") {
            out.push(format!("{}{REDACTED}", &arg[..i + 7]));
            continue;
        }
        out.push(redact_word(arg));
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> String {
        redact_argv(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flag_values_are_redacted() {
        assert_eq!(r(&["serve", "--token=abc123", "--port=80"]), "serve --token=[REDACTED] --port=80");
        assert_eq!(r(&["serve", "--api-key", "abc", "--x", "y"]), "serve --api-key [REDACTED] --x y");
        assert_eq!(r(&["run", "--hf_token", "zzz"]), "run --hf_token [REDACTED]");
        assert_eq!(r(&["PASSWORD=hunter2", "DB_PASSWORD=x"]), "PASSWORD=[REDACTED] DB_PASSWORD=[REDACTED]");
        assert_eq!(r(&["--aws-secret-access-key=Q"]), "--aws-secret-access-key=[REDACTED]");
    }

    #[test]
    fn token_formats_are_redacted_anywhere() {
        let hf = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345";
        assert_eq!(r(&["python", hf]), "python [REDACTED]");
        assert_eq!(r(&[&format!("--x={hf}")]), "--x=[REDACTED]");
        assert_eq!(r(&["AKIAIOSFODNN7EXAMPLE"]), "[REDACTED]");
        assert_eq!(r(&["sk-proj-abcdefghijklmnopqrstuvwxyz"]), "[REDACTED]");
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(r(&["--db", "postgres://alice:s3cret@db:5432/x"]), "--db postgres://alice:[REDACTED]@db:5432/x");
        assert_eq!(r(&["https://h/x?token=abc&y=1"]), "https://h/x?token=[REDACTED]&y=1");
        assert_eq!(r(&["https://h/a@b"]), "https://h/a@b");
    }

    #[test]
    fn bearer_is_redacted() {
        assert_eq!(r(&["-H", "Authorization: Bearer abc.def"]), "-H Authorization: Bearer [REDACTED]");
        assert_eq!(r(&["Bearer", "abc"]), "Bearer [REDACTED]");
    }

    #[test]
    fn ordinary_arguments_survive() {
        let s = r(&["torchrun", "--nproc-per-node=8", "train.py", "--model", "deepseek-ai/DeepSeek-V3", "--keyword=x"]);
        assert_eq!(s, "torchrun --nproc-per-node=8 train.py --model deepseek-ai/DeepSeek-V3 --keyword=x");
    }

    #[test]
    fn secret_flag_at_end_does_not_panic() {
        assert_eq!(r(&["--token"]), "--token");
        assert_eq!(r(&[]), "");
        assert_eq!(r(&["=", "==", "://@", "?&=&"]), "= == ://@ ?&=&");
    }
}
