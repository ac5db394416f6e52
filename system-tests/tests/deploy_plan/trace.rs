//! Reading the plan and the trace `./deploy.sh` prints: its command lines,
//! their words as the shell would split them, placeholders filled in.

/// The plan's command lines (`+ …`), without the prefix.
pub fn commands(plan: &str) -> Vec<&str> {
    plan.lines().filter_map(|l| l.trim_start().strip_prefix("+ ")).collect()
}

/// The command and probe lines (`+ …`, `? …`) of a plan or a trace.
pub fn trace(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("+ ") || l.starts_with("? "))
        .collect()
}

/// Whether `line` is `pattern` with each <placeholder> filled in.
pub fn fills(pattern: &str, line: &str) -> bool {
    let mut parts = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').map(|c| open + c).expect("placeholder closes");
        parts.push(&rest[..open]);
        rest = &rest[close + 1..];
    }
    parts.push(rest);
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return line == first;
    }
    let Some(mut at) = line.strip_prefix(first).map(|_| first.len()) else {
        return false;
    };
    for part in &parts[1..parts.len() - 1] {
        match line[at..].find(part) {
            Some(i) if i > 0 => at += i + part.len(),
            _ => return false,
        }
    }
    // The last placeholder is filled with something too.
    line.len() > at + last.len() && line.ends_with(last)
}

/// Index of the first command starting with `prefix`.
pub fn position(cmds: &[&str], prefix: &str) -> usize {
    cmds.iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no command `{prefix}…` in the plan:\n{}", cmds.join("\n")))
}

/// Splits a command line as the plan quotes it: words, and '…' with '\''.
pub fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quoted, mut in_word) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}
