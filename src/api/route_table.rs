//! Every path and method the management API answers, with what the OpenAPI document
//! says of each. The router finds a request's route here (an unlisted path is 404, an
//! unlisted method 405 with the route's `Allow`) before it dispatches, and the OpenAPI
//! document (`openapi.rs`) is generated from this table: what is served and what is
//! documented cannot differ.

/// A query parameter of a route.
pub struct Param {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

/// One method of a route.
pub struct Op {
    pub method: &'static str,
    pub summary: &'static str,
    pub query: &'static [Param],
    /// What a JSON request body holds (None: no body).
    pub body: Option<&'static str>,
    /// The status codes it answers with, and when.
    pub responses: &'static [(u16, &'static str)],
}

/// A path (`{name}` matches one segment, percent-decoded) and its methods.
pub struct Route {
    pub pattern: &'static str,
    /// Answered without credentials.
    pub open: bool,
    pub ops: &'static [Op],
}

impl Route {
    /// The methods for an `Allow` header (HEAD wherever GET is).
    pub fn allow(&self) -> String {
        let mut v: Vec<&str> = self.ops.iter().map(|o| o.method).collect();
        if v.contains(&"GET") {
            v.push("HEAD");
        }
        v.join(", ")
    }

    /// The operation for `method` (HEAD is GET's).
    pub fn op(&self, method: &str) -> Option<&'static Op> {
        let method = if method == "HEAD" { "GET" } else { method };
        self.ops.iter().find(|o| o.method == method)
    }

    /// The path parameters of `segs` when the route matches them.
    pub fn matches<'s>(&self, segs: &[&'s str]) -> Option<Vec<&'s str>> {
        let mut params = Vec::new();
        let mut pat = self.pattern.split('/').filter(|s| !s.is_empty());
        for seg in segs {
            let p = pat.next()?;
            if p.starts_with('{') {
                params.push(*seg);
            } else if p != *seg {
                return None;
            }
        }
        pat.next().is_none().then_some(params)
    }
}

/// The route of a path (already split into percent-decoded segments): a literal
/// segment wins over a parameter, so routes are tried in order and the table lists
/// literal paths before parameter ones where they overlap.
pub fn find<'s>(segs: &[&'s str]) -> Option<(&'static Route, Vec<&'s str>)> {
    ROUTES
        .iter()
        .find_map(|r| r.matches(segs).map(|params| (r, params)))
}

const OK_JSON: (u16, &str) = (200, "JSON answer");
const BAD: (u16, &str) = (400, "invalid input (the message says which)");
const NO_CLIENT: (u16, &str) = (404, "no such client");
const PATH: Param = Param {
    name: "path",
    required: true,
    description: "the LwM2M path, e.g. /3/0/1",
};
const REQ_ID: Param = Param {
    name: "reqID",
    required: false,
    description: "the command's reqID (a number or a string); generated when absent and \
                  returned in the X-Request-Id header",
};
const WAIT: Param = Param {
    name: "wait",
    required: false,
    description: "wait for the device's answer (a duration such as 5s, at most 60s) and \
                  return it (200) instead of 204",
};
/// What every device operation answers.
const COMMAND_RESPONSES: &[(u16, &str)] = &[
    (
        200,
        "with wait: the command's final MQTT message (the device's response, coap_timeout, \
         coap_reset or an error) as published",
    ),
    (
        204,
        "the command was handed to the device's shard (X-Request-Id: its reqID)",
    ),
    BAD,
    NO_CLIENT,
    (503, "too many requests are waiting for answers"),
    (504, "with wait: no answer in time"),
];
const BODY_DATA: &str = "optional: the command's data object as an MQTT application \
                         would publish it (see docs/mqtt.md); when given, the query's \
                         operation parameters are not used";

const fn command(summary: &'static str, query: &'static [Param], body: &'static str) -> Op {
    Op {
        method: "POST",
        summary,
        query,
        body: Some(body),
        responses: COMMAND_RESPONSES,
    }
}

const fn get(summary: &'static str, responses: &'static [(u16, &'static str)]) -> Op {
    Op {
        method: "GET",
        summary,
        query: &[],
        body: None,
        responses,
    }
}

pub static ROUTES: &[Route] = &[
    Route {
        pattern: "/",
        open: true,
        ops: &[get(
            "the web console's page (it asks for the API key and secret)",
            &[(200, "text/html")],
        )],
    },
    Route {
        pattern: "/console/{file}",
        open: true,
        ops: &[get(
            "the web console's scripts and style sheet",
            &[(200, "the file"), (404, "no such console file")],
        )],
    },
    Route {
        pattern: "/health",
        open: true,
        ops: &[get(
            "whether the gateway is connected to its broker",
            &[(200, "{\"status\":\"ok\"}"), (503, "{\"status\":\"unavailable\"}")],
        )],
    },
    Route {
        pattern: "/metrics",
        open: true,
        ops: &[get("Prometheus text exposition", &[(200, "metrics")])],
    },
    Route {
        pattern: "/api/v5/prometheus/stats",
        open: true,
        ops: &[get("Prometheus text exposition (EMQX's path)", &[(200, "metrics")])],
    },
    Route {
        pattern: "/api/v5/openapi.json",
        open: true,
        ops: &[get("this document", &[(200, "OpenAPI 3 document")])],
    },
    Route {
        pattern: "/api/v5/gateways",
        open: false,
        ops: &[get(
            "the gateways (EMQX's list: lwm2m, its status, connections and listeners)",
            &[OK_JSON],
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m",
        open: false,
        ops: &[
            get("the configuration (EMQX's shape)", &[OK_JSON]),
            Op {
                method: "PUT",
                summary: "change what can change at run time; with persist=true also write it \
                          to the configuration file (else it is lost on restart)",
                query: &[Param {
                    name: "persist",
                    required: false,
                    description: "true: write the changed keys to the TOML file the gateway \
                                  started from (atomically); refused for HOCON files and when \
                                  started without a file",
                }],
                body: Some("a JSON object of configuration keys (EMQX's names)"),
                responses: &[
                    (200, "the configuration now in effect"),
                    (400, "a key that is unknown, invalid or cannot change at run time"),
                    (409, "persist=true but the configuration cannot be written back"),
                ],
            },
        ],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/enable/{enable}",
        open: false,
        ops: &[Op {
            method: "PUT",
            summary: "false: stop serving devices (every registration ends, kicked, and \
                      datagrams are dropped until enabled); true: serve again",
            query: &[],
            body: None,
            responses: &[(204, "done"), (400, "enable is not true or false")],
        }],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/authentication",
        open: false,
        ops: &[
            get("the HTTP authentication configuration", &[OK_JSON]),
            Op {
                method: "PUT",
                summary: "replace the HTTP authentication configuration",
                query: &[],
                body: Some("EMQX's HTTP authenticator object"),
                responses: &[OK_JSON, BAD],
            },
            Op {
                method: "POST",
                summary: "as PUT (EMQX creates the authenticator with POST)",
                query: &[],
                body: Some("EMQX's HTTP authenticator object"),
                responses: &[OK_JSON, BAD],
            },
            Op {
                method: "DELETE",
                summary: "remove the authenticator: devices register without authentication",
                query: &[],
                body: None,
                responses: &[(204, "done")],
            },
        ],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/listeners",
        open: false,
        ops: &[get(
            "the listeners with their running state and connection counts",
            &[OK_JSON],
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/listeners/{id}",
        open: false,
        ops: &[
            get(
                "one listener, by EMQX's id (lwm2m:udp:default)",
                &[OK_JSON, (404, "no such listener")],
            ),
            Op {
                method: "PUT",
                summary: "change max_connections and max_conn_rate; bind and type cannot \
                          change at run time (400 naming the key)",
                query: &[],
                body: Some("the listener object (as GET shows it)"),
                responses: &[OK_JSON, BAD, (404, "no such listener")],
            },
        ],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients",
        open: false,
        ops: &[Op {
            method: "GET",
            summary: "the registered devices, paged and filtered",
            query: &[
                Param { name: "page", required: false, description: "from 1" },
                Param { name: "limit", required: false, description: "1..10000, default 100" },
                Param { name: "clientid", required: false, description: "equal" },
                Param { name: "endpoint_name", required: false, description: "equal" },
                Param { name: "like_clientid", required: false, description: "substring" },
                Param { name: "like_endpoint_name", required: false, description: "substring" },
                Param { name: "username", required: false, description: "equal" },
                Param { name: "like_username", required: false, description: "substring" },
                Param { name: "ip_address", required: false, description: "equal" },
                Param { name: "gte_lifetime", required: false, description: "seconds" },
                Param { name: "lte_lifetime", required: false, description: "seconds" },
            ],
            body: None,
            responses: &[OK_JSON, BAD],
        }],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}",
        open: false,
        ops: &[
            get("one device", &[OK_JSON, NO_CLIENT]),
            Op {
                method: "DELETE",
                summary: "kick: end the registration (a deregister message is published)",
                query: &[],
                body: None,
                responses: &[(204, "done"), NO_CLIENT],
            },
        ],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/subscriptions",
        open: false,
        ops: &[
            get(
                "the MQTT subscription that brings the device its commands",
                &[OK_JSON, NO_CLIENT],
            ),
            Op {
                method: "POST",
                summary: "subscribe: only the device's own command filter is accepted (it is \
                          subscribed already); other topics are refused",
                query: &[],
                body: Some("{\"topic\": FILTER, \"qos\": 0|1|2}"),
                responses: &[(201, "the subscription"), BAD, NO_CLIENT],
            },
        ],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/subscriptions/{topic}",
        open: false,
        ops: &[Op {
            method: "DELETE",
            summary: "refused: the command subscription lives as long as the registration \
                      (kick the client to end it)",
            query: &[],
            body: None,
            responses: &[BAD, NO_CLIENT],
        }],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/lookup",
        open: false,
        ops: &[Op {
            method: "GET",
            summary: "the last answer of the device to a read or discover (sends nothing)",
            query: &[
                PATH,
                Param {
                    name: "action",
                    required: false,
                    description: "discover (default) or read",
                },
            ],
            body: None,
            responses: &[OK_JSON, BAD, NO_CLIENT],
        }],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/command",
        open: false,
        ops: &[Op {
            method: "POST",
            summary: "any command JSON, as an MQTT application publishes it (the console's \
                      way; the answer comes on MQTT and the event stream)",
            query: &[],
            body: Some("{\"reqID\":..,\"msgType\":..,\"data\":{..}}"),
            responses: &[(204, "sent"), BAD, NO_CLIENT],
        }],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/objects",
        open: false,
        ops: &[get(
            "the object definitions in use (id, name, version, multiple)",
            &[OK_JSON, (404, "no object definitions")],
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/objects/{id}",
        open: false,
        ops: &[get(
            "one object definition with its resources",
            &[OK_JSON, (404, "no such object")],
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/read",
        open: false,
        ops: &[command("read (GET)", &[PATH, REQ_ID, WAIT], BODY_DATA)],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/write",
        open: false,
        ops: &[command(
            "write (PUT)",
            &[
                PATH,
                Param {
                    name: "type",
                    required: false,
                    description: "Integer, Float, Time, String, Boolean, Opaque, Objlnk \
                                  (required without a body)",
                },
                Param {
                    name: "value",
                    required: false,
                    description: "the value (required without a body)",
                },
                REQ_ID,
                WAIT,
            ],
            BODY_DATA,
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/observe",
        open: false,
        ops: &[command(
            "observe, or cancel-observe with enable=false",
            &[
                PATH,
                Param {
                    name: "enable",
                    required: false,
                    description: "true (default) or false",
                },
                REQ_ID,
                WAIT,
            ],
            BODY_DATA,
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/discover",
        open: false,
        ops: &[command("discover", &[PATH, REQ_ID, WAIT], BODY_DATA)],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/execute",
        open: false,
        ops: &[command(
            "execute (POST of a resource)",
            &[
                PATH,
                Param {
                    name: "args",
                    required: false,
                    description: "the execute arguments",
                },
                REQ_ID,
                WAIT,
            ],
            BODY_DATA,
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/create",
        open: false,
        ops: &[command(
            "create an object instance",
            &[REQ_ID, WAIT],
            "required: {\"basePath\": OBJECT, \"content\": [{\"path\":..,\"type\":..,\"value\":..}]}",
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/delete",
        open: false,
        ops: &[command("delete an object instance", &[PATH, REQ_ID, WAIT], BODY_DATA)],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/write-attr",
        open: false,
        ops: &[command(
            "write-attributes: pmin, pmax, gt, lt, st, epmin, epmax, edge, con, hqmax as \
             query parameters",
            &[
                PATH,
                Param { name: "pmin", required: false, description: "seconds" },
                Param { name: "pmax", required: false, description: "seconds" },
                Param { name: "gt", required: false, description: "greater than" },
                Param { name: "lt", required: false, description: "less than" },
                Param { name: "st", required: false, description: "step" },
                Param { name: "epmin", required: false, description: "LwM2M 1.2" },
                Param { name: "epmax", required: false, description: "LwM2M 1.2" },
                Param { name: "edge", required: false, description: "LwM2M 1.2" },
                Param { name: "con", required: false, description: "LwM2M 1.2" },
                Param { name: "hqmax", required: false, description: "LwM2M 1.2" },
                REQ_ID,
                WAIT,
            ],
            BODY_DATA,
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/read-composite",
        open: false,
        ops: &[command(
            "read-composite",
            &[
                Param {
                    name: "paths",
                    required: false,
                    description: "comma-separated paths (or a body {\"paths\":[...]})",
                },
                REQ_ID,
                WAIT,
            ],
            BODY_DATA,
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/write-composite",
        open: false,
        ops: &[command(
            "write-composite",
            &[REQ_ID, WAIT],
            "required: {\"content\": [{\"path\":..,\"type\":..,\"value\":..}]}",
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/clients/{clientid}/observe-composite",
        open: false,
        ops: &[command(
            "observe-composite, or cancel-observe-composite with enable=false",
            &[
                Param {
                    name: "paths",
                    required: false,
                    description: "comma-separated paths (or a body {\"paths\":[...]})",
                },
                Param {
                    name: "enable",
                    required: false,
                    description: "true (default) or false",
                },
                REQ_ID,
                WAIT,
            ],
            BODY_DATA,
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/events",
        open: false,
        ops: &[Op {
            method: "GET",
            summary: "live events, Server-Sent Events: everything the gateway publishes \
                      (id: seq, event: msgType, data: {seq, ts, topic, clientid, msgType, \
                      message}), a keepalive comment every 15 s, event lost when this \
                      stream fell behind",
            query: &[Param {
                name: "clientid",
                required: false,
                description: "only this endpoint's events",
            }],
            body: None,
            responses: &[
                (200, "text/event-stream, open until the client or the gateway closes it"),
                (503, "16 streams are open already"),
            ],
        }],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/bootstrap",
        open: false,
        ops: &[get(
            "the Bootstrap-Server's configurations",
            &[OK_JSON, (404, "bootstrap not enabled")],
        )],
    },
    Route {
        pattern: "/api/v5/gateways/lwm2m/bootstrap/{name}",
        open: false,
        ops: &[
            get(
                "one configuration and the device's last bootstrap",
                &[OK_JSON, (404, "none, or bootstrap not enabled")],
            ),
            Op {
                method: "PUT",
                summary: "set the configuration of an endpoint name",
                query: &[],
                body: Some("{\"delete\":[...],\"servers\":[...]}"),
                responses: &[OK_JSON, BAD, (404, "bootstrap not enabled")],
            },
            Op {
                method: "POST",
                summary: "as PUT",
                query: &[],
                body: Some("{\"delete\":[...],\"servers\":[...]}"),
                responses: &[OK_JSON, BAD, (404, "bootstrap not enabled")],
            },
            Op {
                method: "DELETE",
                summary: "remove it",
                query: &[],
                body: None,
                responses: &[(204, "done"), (404, "none, or bootstrap not enabled")],
            },
        ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str = "/api/v5/gateways/lwm2m";

    fn segs(p: &str) -> Vec<&str> {
        p.split('/').filter(|s| !s.is_empty()).collect()
    }

    #[test]
    fn literal_paths_come_before_parameters() {
        let (r, params) = find(&segs("/api/v5/gateways/lwm2m/clients/dev1/read")).unwrap();
        assert_eq!(r.pattern, "/api/v5/gateways/lwm2m/clients/{clientid}/read");
        assert_eq!(params, ["dev1"]);
        let (r, _) = find(&segs("/api/v5/gateways/lwm2m/clients")).unwrap();
        assert_eq!(r.pattern, "/api/v5/gateways/lwm2m/clients");
        assert!(find(&segs("/api/v5/gateways/lwm2m/clients/a/b/c/d")).is_none());
        assert!(find(&segs("/api/v5/gateways/coap")).is_none());
    }

    #[test]
    fn every_route_is_unique_and_under_its_prefix() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert(r.pattern), "{} twice", r.pattern);
            assert!(
                ["/", "/health", "/metrics", "/console/{file}"].contains(&r.pattern)
                    || r.pattern.starts_with("/api/v5/"),
                "{}",
                r.pattern
            );
            assert!(
                r.open || r.pattern.starts_with("/api/v5/gateways"),
                "{}",
                r.pattern
            );
            let methods: std::collections::HashSet<_> = r.ops.iter().map(|o| o.method).collect();
            assert_eq!(methods.len(), r.ops.len(), "{}: a method twice", r.pattern);
            assert!(
                r.pattern == "/api/v5/gateways"
                    || !r.pattern.starts_with("/api/v5/gateways/")
                    || r.pattern.starts_with(GW)
            );
        }
    }
}
