//! Object registry: the shipped definitions, the full OMA registry, hostile
//! files, duplicates and reloading.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_gateway::model::{ObjectModel, Operations, ResourceType};
use lwm2m_gateway::objects::{
    parse_file, parse_str, spawn_watcher, ObjectRegistry, ObjectVersion, ReloadError,
    SharedRegistry, XmlError,
};

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn shipped_dir() -> PathBuf {
    repo_path("etc/lwm2m_xml")
}

fn oma_dir() -> PathBuf {
    repo_path("../shared/lwm2m-registry")
}

fn ops(s: &str) -> Operations {
    Operations::from_xml(s)
}

/// A small valid object file.
fn object_xml(id: u16, name: &str, version: &str, resources: &[(u16, &str, &str)]) -> String {
    let mut items = String::new();
    for (rid, rname, kind) in resources {
        items.push_str(&format!(
            "<Item ID=\"{rid}\"><Name>{rname}</Name><Operations>R</Operations>\
             <MultipleInstances>Single</MultipleInstances><Type>{kind}</Type></Item>\n"
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<LWM2M>\n<Object ObjectType=\"MODefinition\">\
         <Name>{name}</Name><ObjectID>{id}</ObjectID><ObjectVersion>{version}</ObjectVersion>\
         <MultipleInstances>Multiple</MultipleInstances>\n<Resources>\n{items}</Resources></Object></LWM2M>\n"
    )
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), content).unwrap();
}

#[test]
fn shipped_definitions_load_with_known_facts() {
    let (reg, errors) = ObjectRegistry::load_dir(&shipped_dir());
    assert!(errors.is_empty(), "{errors:?}");
    for id in [0, 1, 2, 3, 4, 5, 6, 7, 3303, 3304, 3311, 3323] {
        assert!(reg.object(id).is_some(), "object {id} missing");
    }

    let device = reg.object(3).unwrap();
    assert_eq!(device.name, "Device");
    assert!(!device.multiple);
    let r = reg.resource(3, 0).unwrap();
    assert_eq!(r.name, "Manufacturer");
    assert_eq!(r.kind, ResourceType::String);
    assert_eq!(r.operations, ops("R"));
    assert!(!r.multiple);

    let r = reg.resource(3, 13).unwrap();
    assert_eq!(r.name, "Current Time");
    assert_eq!(r.kind, ResourceType::Time);
    assert_eq!(r.operations, ops("RW"));

    let r = reg.resource(3, 4).unwrap();
    assert_eq!(r.name, "Reboot");
    assert_eq!(r.kind, ResourceType::None);
    assert_eq!(r.operations, ops("E"));

    let r = reg.resource(3303, 5700).unwrap();
    assert_eq!(r.kind, ResourceType::Float);
    assert_eq!(r.operations, ops("R"));
    assert!(reg.object(3303).unwrap().multiple);

    let r = reg.resource(5, 0).unwrap();
    assert_eq!(r.name, "Package");
    assert_eq!(r.kind, ResourceType::Opaque);
    assert_eq!(r.operations, ops("W"));

    assert_eq!(
        reg.get(3).unwrap().version,
        ObjectVersion { major: 1, minor: 2 }
    );
    assert!(reg.resource(3, 7).unwrap().multiple);
}

#[test]
fn shipped_files_carry_the_license_and_match_the_generator() {
    let mut n = 0;
    for entry in std::fs::read_dir(shipped_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "xml") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("Redistribution and use in source and binary forms"),
                "{} has no license header",
                path.display()
            );
            n += 1;
        }
    }
    assert!(n >= 60, "{n} shipped files");

    // generate.py --check: the shipped files are exactly what the generator
    // makes from the registry. Skipped where there is no Python.
    let script = shipped_dir().join("generate.py");
    match std::process::Command::new("python3")
        .arg(&script)
        .arg("--check")
        .arg("--registry")
        .arg(oma_dir())
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "generate.py --check: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("skipping generate.py --check: {e}"),
    }
}

/// The shipped files are reductions of the OMA files: every fact kept must be
/// the same as in the full registry.
#[test]
fn shipped_definitions_match_the_oma_registry() {
    let (shipped, errors) = ObjectRegistry::load_dir(&shipped_dir());
    assert!(errors.is_empty(), "{errors:?}");
    let (full, errors) = ObjectRegistry::load_dir(&oma_dir());
    assert!(errors.is_empty(), "{errors:?}");
    for o in shipped.iter() {
        let f = full
            .get(o.def.id)
            .expect("shipped object is in the registry");
        assert_eq!(o.def, f.def, "object {}", o.def.id);
        assert_eq!(o.version, f.version, "object {}", o.def.id);
        assert_eq!(o.lwm2m_version, f.lwm2m_version, "object {}", o.def.id);
    }
}

#[test]
fn full_oma_registry_loads_without_errors() {
    let dir = oma_dir();
    let xml_files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".xml")
        })
        .count();
    assert!(
        xml_files >= 300,
        "{xml_files} xml files in {}",
        dir.display()
    );
    let (reg, errors) = ObjectRegistry::load_dir(&dir);
    assert!(errors.is_empty(), "{errors:#?}");
    // One object per file, all ids distinct.
    assert_eq!(reg.len(), xml_files);
    assert_eq!(reg.ids().len(), xml_files);
    let ids: Vec<u16> = reg.ids().collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(reg.object(3).unwrap().name, "Device");
    let total_resources: usize = reg.iter().map(|o| o.def.resources.len()).sum();
    assert!(total_resources > 3000, "{total_resources}");
}

#[test]
fn hostile_files_are_errors_not_panics() {
    let valid = object_xml(
        3303,
        "Temperature",
        "1.0",
        &[(5700, "Sensor Value", "Float")],
    );
    let mut garbage = Vec::with_capacity(5 * 1024 * 1024);
    let mut x: u32 = 12345;
    while garbage.len() < 5 * 1024 * 1024 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        garbage.push((x >> 16) as u8);
    }
    // Under the size limit, for the XML parser itself: random markup characters.
    let alphabet = b"<>/=\"'&;!?[]-abc LWM2MObject\n";
    let mut markup = Vec::with_capacity(3 * 1024 * 1024);
    while markup.len() < 3 * 1024 * 1024 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        markup.push(alphabet[(x >> 16) as usize % alphabet.len()]);
    }
    let many_nodes = format!("<LWM2M>{}</LWM2M>", "<a/>".repeat(700_000));
    let deep = format!(
        "<LWM2M><Object><Name>{}x{}</Name></Object></LWM2M>",
        "<a>".repeat(100_000),
        "</a>".repeat(100_000)
    );
    let laughs = {
        let mut s =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE LWM2M [\n<!ENTITY l0 \"lol\">\n");
        for i in 1..12 {
            let prev = format!("&l{};", i - 1);
            s.push_str(&format!("<!ENTITY l{i} \"{}\">\n", prev.repeat(10)));
        }
        s.push_str("]>\n");
        s.push_str(
            &valid
                .replace("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n", "")
                .replace("<Name>Temperature</Name>", "<Name>&l11;</Name>"),
        );
        s
    };
    let external = valid.replace(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n",
        "<?xml version=\"1.0\"?>\n<!DOCTYPE LWM2M [<!ENTITY ext SYSTEM \"file:///etc/passwd\">]>\n",
    ).replace("<Name>Temperature</Name>", "<Name>&ext;</Name>");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.xml", valid.as_bytes()[..valid.len() * 2 / 3].to_vec()),
        ("empty.xml", Vec::new()),
        ("nesting.xml", valid.replace("</Resources></Object>", "</Object></Resources>").into_bytes()),
        ("item-outside.xml", b"<LWM2M><Object><Name>x</Name><ObjectID>1</ObjectID><MultipleInstances>Single</MultipleInstances><Item ID=\"1\"/></Object></LWM2M>".to_vec()),
        ("nan-id.xml", valid.replace("<ObjectID>3303<", "<ObjectID>abc<").into_bytes()),
        ("nan-item.xml", valid.replace("Item ID=\"5700\"", "Item ID=\"5.7e3\"").into_bytes()),
        ("big-id.xml", valid.replace("<ObjectID>3303<", "<ObjectID>99999999999999999999<").into_bytes()),
        ("garbage.xml", garbage),
        ("markup.xml", markup),
        ("many-nodes.xml", many_nodes.into_bytes()),
        ("not-utf8.xml", vec![b'<', 0xff, 0xfe, b'>']),
        ("deep.xml", deep.into_bytes()),
        ("laughs.xml", laughs.into_bytes()),
        ("external.xml", external.into_bytes()),
        ("html.xml", b"<html><body>404</body></html>".to_vec()),
        ("two-roots.xml", format!("{valid}{valid}").into_bytes()),
    ];

    let dir = tempfile::tempdir().unwrap();
    for (name, content) in &cases {
        write(dir.path(), name, content);
        let r = std::panic::catch_unwind(|| parse_file(&dir.path().join(name)));
        match r {
            Ok(Err(_)) => {}
            Ok(Ok(objs)) => panic!("{name}: parsed as {objs:?}"),
            Err(_) => panic!("{name}: parser panicked"),
        }
    }
    write(dir.path(), "3303.xml", &valid);

    let (reg, errors) = ObjectRegistry::load_dir(dir.path());
    assert_eq!(reg.ids().collect::<Vec<_>>(), vec![3303]);
    assert_eq!(errors.len(), cases.len());
    for (name, _) in &cases {
        let e = errors
            .iter()
            .find(|e| e.path.file_name().unwrap() == *name)
            .unwrap_or_else(|| panic!("no error for {name}"));
        // The message names the file and stays short.
        let msg = e.to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.len() < 400, "{msg}");
    }
    let garbage_err = errors
        .iter()
        .find(|e| e.path.ends_with("garbage.xml"))
        .unwrap();
    assert!(
        matches!(garbage_err.error, XmlError::TooLarge),
        "{garbage_err}"
    );
}

#[test]
fn random_bytes_never_panic() {
    let valid = object_xml(1, "A", "1.0", &[(1, "r", "Integer"), (2, "s", "String")]);
    let bytes = valid.as_bytes();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.to_vec();
        // Flip a few bytes and cut at a random place.
        for k in 0..(x % 4 + 1) {
            let i = ((x >> (8 * k)) as usize) % b.len();
            b[i] = (x >> (8 * k + 3)) as u8;
        }
        b.truncate(((x >> 40) as usize) % (b.len() + 1));
        let s = String::from_utf8_lossy(&b);
        let _ = parse_str(&s);
    }
}

#[test]
fn duplicate_ids_higher_version_wins_then_later_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.xml",
        object_xml(3303, "v1.1", "1.1", &[(1, "x", "Float")]),
    );
    write(
        dir.path(),
        "b.xml",
        object_xml(3303, "v1.0", "1.0", &[(1, "x", "Float")]),
    );
    write(
        dir.path(),
        "c.xml",
        object_xml(9000, "first", "2.0", &[(1, "x", "Float")]),
    );
    write(
        dir.path(),
        "d.xml",
        object_xml(9000, "second", "2.0", &[(1, "x", "Float")]),
    );
    let (reg, errors) = ObjectRegistry::load_dir(dir.path());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(reg.len(), 2);
    assert_eq!(reg.object(3303).unwrap().name, "v1.1");
    assert!(reg.get(3303).unwrap().source.ends_with("a.xml"));
    assert_eq!(reg.object(9000).unwrap().name, "second");

    // Duplicate resource ids within one object are an error for that file.
    let twice = object_xml(7000, "t", "1.0", &[(1, "x", "Float"), (1, "y", "String")]);
    assert!(matches!(
        parse_str(&twice),
        Err(XmlError::DuplicateResource {
            object: 7000,
            resource: 1
        })
    ));
}

#[test]
fn missing_dir_is_one_error() {
    let (reg, errors) = ObjectRegistry::load_dir(Path::new("/nonexistent/lwm2m/objects"));
    assert!(reg.is_empty());
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("/nonexistent/lwm2m/objects"));
}

#[test]
fn reload_picks_up_new_files_and_keeps_the_rest_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "3.xml",
        object_xml(3, "Device", "1.0", &[(0, "Manufacturer", "String")]),
    );
    let (shared, errors) = SharedRegistry::from_dir(dir.path());
    assert!(errors.is_empty());
    let before = shared.load();
    assert_eq!(before.len(), 1);

    // A new file.
    write(
        dir.path(),
        "3303.xml",
        object_xml(
            3303,
            "Temperature",
            "1.0",
            &[(5700, "Sensor Value", "Float")],
        ),
    );
    assert_eq!(shared.reload(dir.path()).unwrap(), 2);
    let after = shared.load();
    assert_eq!(
        after.resource(3303, 5700).unwrap().kind,
        ResourceType::Float
    );
    // The snapshot taken before is unchanged.
    assert_eq!(before.len(), 1);
    assert!(before.object(3303).is_none());

    // A broken file: the others stay.
    write(dir.path(), "bad.xml", "<LWM2M><Object>");
    let r = shared.reload_detailed(dir.path()).unwrap();
    assert_eq!(r.objects, 2);
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].path.ends_with("bad.xml"));
    assert_eq!(shared.load().ids().collect::<Vec<_>>(), vec![3, 3303]);

    // Every file broken: the previous registry is kept.
    let current = shared.load();
    write(dir.path(), "3.xml", "garbage");
    write(dir.path(), "3303.xml", "garbage");
    let err = shared.reload(dir.path()).unwrap_err();
    assert!(matches!(err, ReloadError::NothingLoaded { ref errors, .. } if errors.len() == 3));
    assert!(Arc::ptr_eq(&current, &shared.load()));

    // Directory gone: the previous registry is kept.
    let path = dir.path().to_path_buf();
    dir.close().unwrap();
    assert!(matches!(
        shared.reload(&path),
        Err(ReloadError::Unreadable { .. })
    ));
    assert!(Arc::ptr_eq(&current, &shared.load()));
}

/// Waits (bounded) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn watcher_reloads_on_change_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "3.xml",
        object_xml(3, "Device", "1.0", &[(0, "Manufacturer", "String")]),
    );
    let (shared, _) = SharedRegistry::from_dir(dir.path());
    let shared = Arc::new(shared);
    let stop = Arc::new(AtomicBool::new(false));
    let handle = spawn_watcher(
        Arc::clone(&shared),
        dir.path().to_path_buf(),
        Duration::from_millis(10),
        Arc::clone(&stop),
    )
    .unwrap();

    // A file dropped into the directory is picked up.
    write(
        dir.path(),
        "3304.xml",
        object_xml(3304, "Humidity", "1.0", &[(5700, "Sensor Value", "Float")]),
    );
    wait_for("the new object", || shared.load().object(3304).is_some());
    assert_eq!(shared.load().len(), 2);

    // A removed file is dropped.
    std::fs::remove_file(dir.path().join("3304.xml")).unwrap();
    wait_for("the removed object", || {
        shared.load().object(3304).is_none()
    });

    // SIGHUP reloads even without a change.
    let generation = shared.generation();
    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
    wait_for("the SIGHUP reload", || shared.generation() > generation);

    stop.store(true, Ordering::Release);
    handle.join().unwrap();

    // Once stopped, changes are no longer picked up.
    let generation = shared.generation();
    write(
        dir.path(),
        "3305.xml",
        object_xml(3305, "Power", "1.0", &[(5800, "Power", "Float")]),
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(shared.generation(), generation);
}

#[test]
fn readers_on_many_threads_during_reloads() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "3.xml",
        object_xml(3, "Device", "1.0", &[(0, "Manufacturer", "String")]),
    );
    let (shared, _) = SharedRegistry::from_dir(dir.path());
    let shared = Arc::new(shared);
    let done = Arc::new(AtomicBool::new(false));
    let started = Arc::new(std::sync::Barrier::new(5));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let shared = Arc::clone(&shared);
            let done = Arc::clone(&done);
            let started = Arc::clone(&started);
            std::thread::spawn(move || {
                started.wait();
                let mut batches = 0u64;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let reg = shared.load();
                    // Within one snapshot the view is consistent.
                    assert_eq!(reg.resource(3, 0).unwrap().kind, ResourceType::String);
                    assert_eq!(reg.len(), reg.ids().count());
                    batches += 1;
                    if finished {
                        // Set after the last reload: that one is visible.
                        assert_eq!(reg.len(), 21);
                        break batches;
                    }
                }
            })
        })
        .collect();
    started.wait();
    for i in 0..20u16 {
        write(
            dir.path(),
            &format!("{}.xml", 4000 + i),
            object_xml(4000 + i, "X", "1.0", &[(1, "v", "Integer")]),
        );
        assert_eq!(shared.reload(dir.path()).unwrap(), 2 + i as usize);
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}
