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
        Self { parts }
    }

    /// True when the only placeholder is `${endpoint_name}` (at most once): then a
    /// command topic names its endpoint directly.
    pub fn keyed_by_name(&self) -> bool {
        let vars: Vec<_> = self
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(v) => Some(*v),
                Part::Lit(_) => None,
            })
            .collect();
        vars.len() == 1 && vars[0] == Placeholder::EndpointName
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
    /// characters without `/`. Also returns the endpoint name when the template
    /// captures it.
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
                    let level_end = rest.find('/').unwrap_or(rest.len());
                    // The capture ends where the next literal starts within this level.
                    let end = match self.parts.get(i + 1) {
                        Some(Part::Lit(next)) => {
                            let within = &rest[..level_end];
                            match next.split('/').next().filter(|s| !s.is_empty()) {
                                Some(head) => within.find(head)?,
                                None => level_end,
                            }
                        }
                        _ => level_end,
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

    /// An MQTT filter covering every rendering: each topic level holding a
    /// placeholder becomes `+`.
    pub fn wildcard(&self) -> String {
        let mut probe = String::new();
        let marker = "\u{0}";
        let v = Vars {
            endpoint_name: marker,
            clientid: marker,
            username: marker,
            peerhost: marker,
        };
        self.render(&v, &mut probe);
        probe
            .split('/')
            .map(|level| if level.contains(marker) { "+" } else { level })
            .collect::<Vec<_>>()
            .join("/")
    }
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
            Template::parse("lwm2m/${endpoint_name}/").wildcard(),
            "lwm2m/+/"
        );
        assert_eq!(Template::parse("a/dev-${clientid}/b/").wildcard(), "a/+/b/");
        assert!(filter_matches("lwm2m/+/dn/#", "lwm2m/dev1/dn/cmd"));
        assert!(filter_matches("lwm2m/+/dn/#", "lwm2m/dev1/dn"));
        assert!(!filter_matches("lwm2m/+/dn/#", "lwm2m/dev1/up/resp"));
        assert!(filter_matches("lwm2m/dev1/dn/cmd", "lwm2m/dev1/dn/cmd"));
    }
}
