//! Splitting a `--command` string into words, as a POSIX shell would, without any expansion.

/// Splits a command string the way a POSIX shell splits words: blanks separate, `'…'` is
/// literal, `"…"` allows `\"`, `\\`, `\$` and `` \` ``, and a backslash outside quotes escapes
/// the next character. No expansion of any kind happens.
pub fn split_command(text: &str) -> Result<Vec<String>, &'static str> {
    #[derive(PartialEq)]
    enum State {
        Blank,
        Word,
        Single,
        Double,
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut state = State::Blank;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match state {
            State::Blank | State::Word => match c {
                ' ' | '\t' | '\n' => {
                    if state == State::Word {
                        words.push(std::mem::take(&mut word));
                    }
                    state = State::Blank;
                }
                '\'' => state = State::Single,
                '"' => state = State::Double,
                '\\' => {
                    word.push(chars.next().ok_or("ends with a lone backslash")?);
                    state = State::Word;
                }
                c => {
                    word.push(c);
                    state = State::Word;
                }
            },
            State::Single => match c {
                '\'' => state = State::Word,
                c => word.push(c),
            },
            State::Double => match c {
                '"' => state = State::Word,
                '\\' => match chars.next() {
                    Some(e @ ('"' | '\\' | '$' | '`')) => word.push(e),
                    Some(e) => {
                        word.push('\\');
                        word.push(e);
                    }
                    None => return Err("has an unterminated double quote"),
                },
                c => word.push(c),
            },
        }
    }
    match state {
        State::Single => Err("has an unterminated single quote"),
        State::Double => Err("has an unterminated double quote"),
        State::Word => {
            words.push(word);
            Ok(words)
        }
        State::Blank => Ok(words),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell() {
        let ok: &[(&str, &[&str])] = &[
            ("/bin/sh -c *", &["/bin/sh", "-c", "*"]),
            ("  /usr/bin/make   test ", &["/usr/bin/make", "test"]),
            ("/bin/echo 'a b' \"c d\"", &["/bin/echo", "a b", "c d"]),
            ("/bin/echo it\\'s", &["/bin/echo", "it's"]),
            ("/bin/echo \"q\\\"x\\n\"", &["/bin/echo", "q\"x\\n"]),
            ("/bin/echo '' x", &["/bin/echo", "", "x"]),
            ("/bin/echo a'b'\"c\"", &["/bin/echo", "abc"]),
            ("/bin/echo '$HOME' *.rs", &["/bin/echo", "$HOME", "*.rs"]),
        ];
        for (text, want) in ok {
            assert_eq!(split_command(text).unwrap(), *want, "{text}");
        }
        for (text, why) in [
            ("/bin/echo 'x", "has an unterminated single quote"),
            ("/bin/echo \"x", "has an unterminated double quote"),
            ("/bin/echo x\\", "ends with a lone backslash"),
        ] {
            assert_eq!(split_command(text), Err(why), "{text}");
        }
    }
}
