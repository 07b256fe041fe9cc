//! What of an upstream's own words may be passed on to callers and logs.
//!
//! Error messages quote the authority (`authority said: …`) because its text is what an
//! operator can act on. Entra never echoes a credential, but the authority is whatever
//! `authority_host` names, and a mistyped or hostile host can put anything in its answer,
//! including the request body it received. So before any of its text is relayed, every
//! credential the request carried is replaced by `<redacted>`, both as sent and in the
//! form-encoded spelling it had on the wire, and the text is cut to [`MAX_RELAYED_CHARS`].
//!
//! Scrubbing happens before cutting: a cut first could split a secret and leave a prefix of it
//! that no longer matches. What cannot be recognised is a credential the upstream transformed
//! (reversed, re-encoded) before echoing it; the length bound limits how much of anything
//! comes through, and `authority_host` stays configuration an operator must trust.

use url::form_urlencoded;

/// The most characters of an upstream's text that one message relays.
pub const MAX_RELAYED_CHARS: usize = 512;
/// What stands in for a scrubbed value; the same marker `Secret` prints.
const REDACTED: &str = "<redacted>";
/// Marks a cut.
const ELLIPSIS: char = '…';

/// `text` with every value of `secrets` replaced by `<redacted>`, as sent and form-encoded.
/// Empty values are skipped: they would match everywhere and hide nothing.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret) {
            text = text.replace(secret, REDACTED);
        }
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        if encoded != *secret && text.contains(&encoded) {
            text = text.replace(&encoded, REDACTED);
        }
    }
    text
}

/// `text` cut to at most [`MAX_RELAYED_CHARS`] characters, on a character boundary, with an
/// ellipsis marking the cut.
pub fn bound(text: &str) -> String {
    match text.char_indices().nth(MAX_RELAYED_CHARS) {
        None => text.to_owned(),
        Some(_) => {
            let keep = text.char_indices().nth(MAX_RELAYED_CHARS - 1).map_or(text.len(), |(at, _)| at);
            let mut cut = text[..keep].to_owned();
            cut.push(ELLIPSIS);
            cut
        }
    }
}

/// [`scrub`], then [`bound`]: the form in which an upstream's text leaves the process.
pub fn relayable(text: &str, secrets: &[&str]) -> String {
    bound(&scrub(text, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_as_sent_and_as_form_encoded() {
        let secret = "s3cr~t+value/with=chars";
        let body = format!(
            "client_id=c&client_secret={}",
            form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
        );
        assert!(!body.contains(secret), "the test needs a value that form encoding changes");
        let text = format!("bad request: {body}; raw {secret}");
        let scrubbed = scrub(&text, &[secret, "unused-value"]);
        assert_eq!(scrubbed, "bad request: client_id=c&client_secret=<redacted>; raw <redacted>");
    }

    #[test]
    fn empty_secrets_hide_nothing() {
        assert_eq!(scrub("nothing to hide", &["", "absent"]), "nothing to hide");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let short = "é".repeat(MAX_RELAYED_CHARS);
        assert_eq!(bound(&short), short, "exactly the limit is kept whole");
        let long = "é".repeat(MAX_RELAYED_CHARS + 1);
        let cut = bound(&long);
        assert_eq!(cut.chars().count(), MAX_RELAYED_CHARS);
        assert!(cut.ends_with(ELLIPSIS) && cut.starts_with("éé"));
    }

    #[test]
    fn scrubbing_comes_before_the_cut() {
        // A secret straddling the limit: cut first, its prefix would survive unrecognised.
        let secret = "x".repeat(40);
        let text = format!("{}{secret}", "a".repeat(MAX_RELAYED_CHARS - 20));
        let relayed = relayable(&text, &[&secret]);
        assert!(!relayed.contains("xxxxx"), "{relayed}");
        assert!(relayed.chars().count() <= MAX_RELAYED_CHARS);
    }
}
