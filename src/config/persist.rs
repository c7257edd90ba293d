//! Writing a configuration change made through the management API back to the TOML file
//! the gateway started from (`PUT /api/v5/gateways/lwm2m?persist=true`): the keys the
//! change named are set in the file, everything else in it (comments, order, other keys)
//! stays as it is, and the file is replaced atomically (a temporary file in the same
//! directory, synced, then renamed over it). EMQX's HOCON files are not rewritten.

use std::io::Write;
use std::path::Path;

use simd_json::prelude::*;
use simd_json::OwnedValue;
use toml_edit::{DocumentMut, Item, Value};

use super::duration::format_duration;
use super::{AutoObserve, Config, UpdateCondition};

/// The file a persisted change goes to, or why there is none.
pub fn target(path: Option<&Path>) -> Result<&Path, String> {
    let Some(path) = path else {
        return Err(
            "persist=true: the gateway started without a configuration file \
                    (built-in defaults), so there is no file to write; nothing was changed"
                .into(),
        );
    };
    if matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("conf" | "hocon")
    ) {
        return Err(format!(
            "persist=true is refused for EMQX HOCON files ({}): they are not rewritten; \
             nothing was changed (apply without persist and edit the file, or use TOML)",
            path.display()
        ));
    }
    Ok(path)
}

/// Whether the file at `path` can be replaced: it exists and a file can be made beside
/// it (a read-only mount, or a directory the gateway's user may not write, cannot).
pub fn writable(path: &Path) -> Result<(), String> {
    std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let probe = temp_name(path)?;
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            format!(
                "persist=true: cannot write beside {} ({e}); nothing was changed",
                path.display()
            )
        })
}

fn temp_name(path: &Path) -> Result<std::path::PathBuf, String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or("the configuration path has no file name")?;
    Ok(dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Sets in the TOML file at `path` every key that `change` (a configuration PUT's
/// document, already applied) names, with its value from `cfg` (the configuration now in
/// effect), and replaces the file atomically.
pub fn write(path: &Path, change: &OwnedValue, cfg: &Config) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: not TOML any more: {e}", path.display()))?;
    let obj = change
        .as_object()
        .ok_or("the configuration must be a JSON object")?;
    let root = doc.as_item_mut();
    for (k, x) in obj.iter() {
        match k.as_str() {
            // Unchanged by a PUT (the API refuses a different value).
            "name" | "enable" | "mountpoint" | "xml_dir" => {}
            "lifetime_min" => set(root, &[k], dur(cfg.lifetime_min))?,
            "lifetime_max" => set(root, &[k], dur(cfg.lifetime_max))?,
            "qmode_time_window" => set(root, &[k], dur(cfg.qmode_time_window))?,
            "idle_timeout" => set(root, &[k], dur(cfg.idle_timeout))?,
            "enable_stats" => set(root, &[k], cfg.enable_stats.into())?,
            "auto_observe" => {
                let v = match &cfg.auto_observe {
                    AutoObserve::Off => false.into(),
                    AutoObserve::All => true.into(),
                    AutoObserve::Paths(p) => Value::Array(p.iter().collect()),
                };
                set(root, &[k], v)?
            }
            "update_msg_publish_condition" => {
                let v = match cfg.update_msg_publish_condition {
                    UpdateCondition::Always => "always",
                    UpdateCondition::ContainsObjectList => "contains_object_list",
                };
                set(root, &[k], v.into())?
            }
            "translators" => {
                for name in x.as_object().into_iter().flat_map(|t| t.keys()) {
                    let Some((_, tr)) = cfg.translators.iter().into_iter().find(|(n, _)| n == name)
                    else {
                        continue;
                    };
                    set(root, &[k, name, "topic"], tr.topic.as_str().into())?;
                    set(root, &[k, name, "qos"], i64::from(tr.qos).into())?;
                }
            }
            "blockwise" => {
                let b = &cfg.blockwise;
                for key in x.as_object().into_iter().flat_map(|t| t.keys()) {
                    let v: Value = match key.as_ref() {
                        "enable" => b.enable.into(),
                        "max_block_size" => i64::from(b.max_block_size).into(),
                        "max_body_size" => limit(b.max_body_size),
                        "exchange_lifetime" => dur(b.exchange_lifetime),
                        _ => continue,
                    };
                    set(root, &[k, key], v)?;
                }
            }
            "listeners" => {
                for l in x.as_array().into_iter().flatten() {
                    let ty = l.get("type").and_then(|t| t.as_str()).unwrap_or("udp");
                    let name = l.get("name").and_then(|t| t.as_str()).unwrap_or("default");
                    let (max_connections, max_conn_rate) = match ty {
                        "udp" => cfg
                            .listeners
                            .udp
                            .get(name)
                            .map(|l| (l.max_connections, l.max_conn_rate)),
                        "dtls" => cfg
                            .listeners
                            .dtls
                            .get(name)
                            .map(|l| (l.max_connections, l.max_conn_rate)),
                        _ => None,
                    }
                    .ok_or_else(|| format!("listeners: no {ty} listener {name:?}"))?;
                    for (key, v) in [
                        ("max_connections", max_connections),
                        ("max_conn_rate", max_conn_rate),
                    ] {
                        if l.get(key).is_some() {
                            set(root, &["listeners", ty, name, key], limit(v))?;
                        }
                    }
                }
            }
            other => return Err(format!("{other}: not a key that can be written back")),
        }
    }
    replace(path, doc.to_string().as_bytes())
}

fn dur(d: std::time::Duration) -> Value {
    format_duration(d).into()
}

/// A count as the file spells it: `"infinity"` for no limit.
fn limit(n: u64) -> Value {
    match i64::try_from(n) {
        Ok(n) if n != i64::MAX => n.into(),
        _ => "infinity".into(),
    }
}

/// Sets `keys` (a path of tables, then the key) to `v`, making missing tables; an
/// existing value keeps its comment and spacing.
fn set(root: &mut Item, keys: &[&str], v: Value) -> Result<(), String> {
    let (last, tables) = keys.split_last().ok_or("no key")?;
    let mut at = root;
    for (i, k) in tables.iter().enumerate() {
        let table = at
            .as_table_like_mut()
            .ok_or_else(|| format!("{} is not a table in the file", keys[..i].join(".")))?;
        if table.get(k).is_none() {
            table.insert(k, Item::Table(toml_edit::Table::new()));
        }
        at = table.get_mut(k).ok_or("lost a table")?;
    }
    let table = at
        .as_table_like_mut()
        .ok_or_else(|| format!("{} is not a table in the file", tables.join(".")))?;
    match table.get_mut(last).and_then(Item::as_value_mut) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = v;
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(last, Item::Value(v));
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes`: a temporary file beside it, synced, renamed over it.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(path)?;
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(target(None).is_err());
        assert!(target(Some(Path::new("/x/gw.conf"))).is_err());
        assert!(target(Some(Path::new("/x/gw.hocon"))).is_err());
        assert!(target(Some(Path::new("/x/gw.toml"))).is_ok());
    }

    #[test]
    fn writes_only_the_changed_keys_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        let text = "# my gateway\nlifetime_max = \"1d\"  # keep this comment\n\n\
                    [translators]\nnotify = { topic = \"up/notify\", qos = 0 }\n\n\
                    [listeners.udp.default]\nbind = \"127.0.0.1:0\"\nmax_conn_rate = 5\n";
        std::fs::write(&path, text).unwrap();
        let mut cfg = Config::from_toml_str(text).unwrap();
        cfg.lifetime_max = std::time::Duration::from_secs(3600);
        cfg.qmode_time_window = std::time::Duration::from_secs(30);
        cfg.translators.notify.qos = 1;
        cfg.listeners.udp.get_mut("default").unwrap().max_conn_rate = 77;
        let change = simd_json::to_owned_value(
            &mut br#"{"lifetime_max":"1h","qmode_time_window":"30s","translators":{"notify":{"qos":1}},"listeners":[{"type":"udp","name":"default","max_conn_rate":77}]}"#.to_vec(),
        )
        .unwrap();
        write(&path, &change, &cfg).unwrap();
        let out = std::fs::read_to_string(&path).unwrap();
        assert!(out.starts_with("# my gateway\n"), "{out}");
        assert!(out.contains("# keep this comment"), "{out}");
        let back = Config::from_toml_str(&out).unwrap();
        assert_eq!(back.lifetime_max, cfg.lifetime_max);
        assert_eq!(back.qmode_time_window, cfg.qmode_time_window);
        assert_eq!(back.translators.notify.qos, 1);
        assert_eq!(back.listeners.udp["default"].max_conn_rate, 77);
        assert_eq!(
            back.listeners.udp["default"].bind,
            cfg.listeners.udp["default"].bind
        );
        // Nothing else left behind in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
