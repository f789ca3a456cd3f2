//! "Did you mean": the closest of some known names to a word the user
//! typed, for hosts, tops, subcommands and configuration keys.

/// The candidate closest to `word`, if one is close enough to be a slip of
/// the keyboard (Jaro-Winkler above 0.8, case-insensitive).
pub fn closest<'a, S: AsRef<str> + ?Sized + 'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a S>,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word, &c.as_ref().to_lowercase()), c.as_ref()))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slips_of_the_keyboard_only() {
        let tops = ["helloTop", "linacTop"];
        assert_eq!(closest("heldtop", &tops), Some("helloTop"));
        assert_eq!(closest("linactop", &tops), Some("linacTop"));
        assert_eq!(closest("booster", &tops), None);
        assert_eq!(closest::<str>("x", []), None);
    }
}
