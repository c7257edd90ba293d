//! Topic templates: the mountpoint with its placeholders (`${endpoint_name}`,
//! `${clientid}`, `${username}`, `${peerhost}`), rendered per endpoint, matched
//! against incoming command topics, and turned into a wildcard subscription filter.

/// A placeholder the mountpoint may contain. Unknown placeholders stay literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    EndpointName,
    ClientId,
    Username,
    PeerHost,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "endpoint_name" => Self::EndpointName,
            "clientid" => Self::ClientId,
            "username" => Self::Username,
            "peerhost" => Self::PeerHost,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Placeholder),
}

/// The values placeholders take for one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub endpoint_name: &'a str,
    pub clientid: &'a str,
    pub username: &'a str,
    pub peerhost: &'a str,
}

/// A parsed mountpoint template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// Per part: for a placeholder, the literal text that follows it in its topic level and
    /// whether the level ends right after that text (at a `/` or the end of the topic) rather
    /// than at another placeholder. Empty for literals.
    tails: Vec<(String, bool)>,
    /// What every matched topic continues with after a rendering (the command topic), so
    /// that a placeholder in the last level (`lwm2m/${endpoint_name}` + `dn/#`) ends where
    /// the command topic's first level begins.
    suffix: String,
}

impl Template {
    pub fn parse(s: &str) -> Self {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            match after
                .find('}')
                .and_then(|j| Placeholder::parse(&after[..j]).map(|p| (j, p)))
            {
                Some((j, p)) => {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(p));
                    rest = &after[j + 1..];
                }
                None => {
                    lit.push_str("${");
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Self {
            parts,
            tails: Vec::new(),
            suffix: String::new(),
        }
        .with_suffix("")
    }

    /// The template as matched against topics that continue with `suffix` (the command
    /// topic, wildcards included) after the rendered mountpoint.
    pub fn with_suffix(mut self, suffix: &str) -> Self {
        self.suffix = suffix.to_string();
        self.tails = (0..self.parts.len()).map(|i| self.level_tail(i)).collect();
        self
    }

    /// See [`Template::tails`].
    fn level_tail(&self, i: usize) -> (String, bool) {
        if matches!(self.parts[i], Part::Lit(_)) {
            return (String::new(), false);
        }
        let mut tail = String::new();
        for p in &self.parts[i + 1..] {
            match p {
                Part::Lit(s) => match s.find('/') {
                    Some(j) => {
                        tail.push_str(&s[..j]);
                        return (tail, true);
                    }
                    None => tail.push_str(s),
                },
                Part::Var(_) => return (tail, false),
            }
        }
        // The template ends inside this level: the suffix's first level completes it
        // (a wildcard there cannot share a level, which the configuration refuses).
        let first = &self.suffix[..self.suffix.find('/').unwrap_or(self.suffix.len())];
        if !first.contains(['+', '#']) {
            tail.push_str(first);
        }
        (tail, true)
    }

    /// True when the only placeholder is `${endpoint_name}` (at most once): then a
    /// command topic names its endpoint directly.
    pub fn keyed_by_name(&self) -> bool {
        let vars: Vec<_> = self.vars().collect();
        vars.len() == 1 && vars[0] == Placeholder::EndpointName
    }

    /// The placeholders the template holds, in order.
    pub fn vars(&self) -> impl Iterator<Item = Placeholder> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(*v),
            Part::Lit(_) => None,
        })
    }

    /// True if the template holds placeholder `p`.
    pub fn uses(&self, p: Placeholder) -> bool {
        self.vars().any(|v| v == p)
    }

    /// True if two placeholders follow each other with no literal text between them
    /// (`${clientid}${username}`): a topic could not be split back into their values.
    pub fn has_adjacent_placeholders(&self) -> bool {
        self.parts
            .windows(2)
            .any(|w| matches!(w, [Part::Var(_), Part::Var(_)]))
    }

    /// Renders the template for one endpoint.
    pub fn render(&self, v: &Vars<'_>, out: &mut String) {
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(Placeholder::EndpointName) => out.push_str(v.endpoint_name),
                Part::Var(Placeholder::ClientId) => out.push_str(v.clientid),
                Part::Var(Placeholder::Username) => out.push_str(v.username),
                Part::Var(Placeholder::PeerHost) => out.push_str(v.peerhost),
            }
        }
    }

    /// Splits `topic` into (rendered mountpoint, rest) if the topic starts with a
    /// rendering of this template. A placeholder matches one non-empty run of
    /// characters without `/`, ending where the literal text after it in its level
    /// (from the template, else from the suffix) ends the level. Also returns the
    /// endpoint name when the template captures it.
    pub fn match_prefix<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str, Option<&'t str>)> {
        let mut pos = 0;
        let mut name = None;
        for (i, p) in self.parts.iter().enumerate() {
            match p {
                Part::Lit(s) => {
                    if !topic[pos..].starts_with(s.as_str()) {
                        return None;
                    }
                    pos += s.len();
                }
                Part::Var(v) => {
                    let rest = &topic[pos..];
                    let level = &rest[..rest.find('/').unwrap_or(rest.len())];
                    let (tail, ends_level) = &self.tails[i];
                    let end = if *ends_level {
                        // The level ends with the tail: the capture is what precedes it.
                        level.strip_suffix(tail.as_str())?.len()
                    } else if tail.is_empty() {
                        level.len()
                    } else {
                        // Another placeholder follows in this level: the first occurrence
                        // of the literal between them ends this one.
                        level.get(1..)?.find(tail.as_str())? + 1
                    };
                    if end == 0 {
                        return None;
                    }
                    if *v == Placeholder::EndpointName {
                        name = Some(&rest[..end]);
                    }
                    pos += end;
                }
            }
        }
        Some((&topic[..pos], &topic[pos..], name))
    }

    /// An MQTT filter covering every rendering followed by `suffix` (the command topic):
    /// each topic level holding a placeholder becomes `+`. Built over the concatenation,
    /// so a placeholder in the mountpoint's last level (`lwm2m/${endpoint_name}` with
    /// `dn/#`) gives `lwm2m/+/#`, a valid filter.
    pub fn wildcard_filter(&self, suffix: &str) -> String {
        let mut probe = String::new();
        let marker = "\u{0}";
        let v = Vars {
            endpoint_name: marker,
            clientid: marker,
            username: marker,
            peerhost: marker,
        };
        self.render(&v, &mut probe);
        probe.push_str(suffix);
        probe
            .split('/')
            .map(|level| if level.contains(marker) { "+" } else { level })
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Checks a device-supplied value a placeholder would put into topics: it must form
/// (part of) one non-empty topic level that MQTT accepts and that a command topic can
/// be matched back to: no `/`, no wildcard (`+`, `#`), no NUL or other control
/// character.
pub fn check_level_value(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("is empty");
    }
    if v.contains(['/', '+', '#']) {
        return Err("contains '/', '+' or '#'");
    }
    if v.chars().any(char::is_control) {
        return Err("contains NUL or a control character");
    }
    Ok(())
}

/// True if `topic` matches the MQTT filter `filter` (`+` and `#` wildcards).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(ep: &'a str) -> Vars<'a> {
        Vars {
            endpoint_name: ep,
            clientid: "cid",
            username: "imei1",
            peerhost: "10.0.0.1",
        }
    }

    #[test]
    fn renders_placeholders() {
        let t = Template::parse("lwm2m/${endpoint_name}/${username}/${peerhost}/${nope}/");
        let mut s = String::new();
        t.render(&vars("dev1"), &mut s);
        assert_eq!(s, "lwm2m/dev1/imei1/10.0.0.1/${nope}/");
        assert!(!t.keyed_by_name());
        assert!(Template::parse("lwm2m/${endpoint_name}/").keyed_by_name());
    }

    #[test]
    fn matches_command_topics() {
        let t = Template::parse("lwm2m/${endpoint_name}/");
        assert_eq!(
            t.match_prefix("lwm2m/dev1/dn/cmd"),
            Some(("lwm2m/dev1/", "dn/cmd", Some("dev1")))
        );
        assert_eq!(t.match_prefix("other/dev1/dn"), None);
        assert_eq!(t.match_prefix("lwm2m//dn"), None);
        let t = Template::parse("gw/dev-${endpoint_name}-x/");
        assert_eq!(
            t.match_prefix("gw/dev-abc-x/dn"),
            Some(("gw/dev-abc-x/", "dn", Some("abc")))
        );
        let t = Template::parse("");
        assert_eq!(t.match_prefix("dn/x"), Some(("", "dn/x", None)));
    }

    #[test]
    fn wildcard_filters() {
        assert_eq!(
            Template::parse("lwm2m/${endpoint_name}/").wildcard_filter("dn/#"),
            "lwm2m/+/dn/#"
        );
        assert_eq!(
            Template::parse("a/dev-${clientid}/b/").wildcard_filter("dn/#"),
            "a/+/b/dn/#"
        );
        // A placeholder in the last level without a trailing '/': the command topic's
        // first level shares that level, which becomes '+' as a whole.
        assert_eq!(
            Template::parse("lwm2m/${endpoint_name}").wildcard_filter("dn/#"),
            "lwm2m/+/#"
        );
        assert_eq!(
            Template::parse("lwm2m/${endpoint_name}").wildcard_filter("/dn/#"),
            "lwm2m/+/dn/#"
        );
        assert!(filter_matches("lwm2m/+/dn/#", "lwm2m/dev1/dn/cmd"));
        assert!(filter_matches("lwm2m/+/dn/#", "lwm2m/dev1/dn"));
        assert!(!filter_matches("lwm2m/+/dn/#", "lwm2m/dev1/up/resp"));
        assert!(filter_matches("lwm2m/dev1/dn/cmd", "lwm2m/dev1/dn/cmd"));
        assert!(filter_matches("lwm2m/+/#", "lwm2m/dev1dn/cmd"));
    }

    #[test]
    fn placeholder_in_the_last_level_without_a_slash() {
        // Topics are plain concatenations: `lwm2m/${endpoint_name}` + `dn/#` gives
        // `lwm2m/<ep>dn/...`; the capture ends where the command topic begins.
        let t = Template::parse("lwm2m/${endpoint_name}").with_suffix("dn/#");
        assert_eq!(
            t.match_prefix("lwm2m/dev1dn/cmd"),
            Some(("lwm2m/dev1", "dn/cmd", Some("dev1")))
        );
        // A name that itself contains the command topic's text.
        assert_eq!(
            t.match_prefix("lwm2m/adn1dn/cmd"),
            Some(("lwm2m/adn1", "dn/cmd", Some("adn1")))
        );
        assert_eq!(
            t.match_prefix("lwm2m/dndn"),
            Some(("lwm2m/dn", "dn", Some("dn")))
        );
        assert_eq!(t.match_prefix("lwm2m/dn/cmd"), None, "empty name");
        assert_eq!(t.match_prefix("lwm2m/dev1up/resp"), None);
        // The rendered command filter of an endpoint matches what the router accepts.
        let mut mp = String::new();
        t.render(&vars("adn1"), &mut mp);
        let filter = format!("{mp}dn/#");
        assert_eq!(filter, "lwm2m/adn1dn/#");
        assert!(filter_matches(&filter, "lwm2m/adn1dn/cmd"));
        assert!(filter_matches(
            &t.wildcard_filter("dn/#"),
            "lwm2m/adn1dn/cmd"
        ));
        // A literal after the placeholder in the same level ends it at the level's end.
        let t = Template::parse("gw/dev-${endpoint_name}-x/");
        assert_eq!(
            t.match_prefix("gw/dev-a-xb-x/dn"),
            Some(("gw/dev-a-xb-x/", "dn", Some("a-xb")))
        );
        // Two placeholders in one level split at the literal between them.
        let t = Template::parse("gw/${username}-${endpoint_name}/");
        assert_eq!(
            t.match_prefix("gw/u1-dev-9/dn"),
            Some(("gw/u1-dev-9/", "dn", Some("dev-9")))
        );
        assert!(Template::parse("a/${clientid}${username}/").has_adjacent_placeholders());
        assert!(!t.has_adjacent_placeholders());
    }

    #[test]
    fn level_values() {
        assert!(check_level_value("imei-1:2").is_ok());
        for bad in ["", "a/b", "a+", "#", "a\0b", "a\nb"] {
            assert!(check_level_value(bad).is_err(), "{bad:?}");
        }
    }
}
