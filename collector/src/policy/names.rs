//! Model names in command lines (`org/name` pairs, Hugging Face cache directories) and the glob that
//! matches them against the lists' patterns.

/// Model-id candidates in a command line: every `org/name` tail of each word, and Hugging Face cache
/// directory names (`models--org--name`) turned back into `org/name`.
pub fn model_candidates(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in cmdline.split(|c: char| c.is_whitespace() || matches!(c, '=' | ',' | '"' | '\'' | ';')) {
        if word.is_empty() || word.len() > 1024 {
            continue;
        }
        let parts: Vec<&str> = word.split('/').filter(|s| !s.is_empty()).collect();
        for w in parts.windows(2) {
            out.push(format!("{}/{}", w[0], w[1]));
        }
        for part in &parts {
            if let Some(rest) = part.strip_prefix("models--") {
                let mut it = rest.splitn(2, "--");
                if let (Some(org), Some(name)) = (it.next(), it.next()) {
                    out.push(format!("{org}/{name}"));
                }
            }
        }
    }
    out
}

/// Glob match with `*` (any run) and `?` (one character), iterative with backtracking on the last `*`.
/// `?` is one character: over bytes where both are ASCII (no allocation), else over characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        return glob_over(pattern.as_bytes(), text.as_bytes(), b'*', b'?');
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    glob_over(&p, &t, '*', '?')
}

fn glob_over<T: PartialEq + Copy>(p: &[T], t: &[T], any: T, one: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == any {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == any)
}
