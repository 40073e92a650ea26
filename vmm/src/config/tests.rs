//! The configuration model: the config file's shape, each resource's
//! checks, the rules between resources, and the command line's specs.

use super::*;

const GOOD: &str = r#"{
    "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"},
    "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false}
}"#;

#[test]
fn parses_firecracker_file() {
    let c = VmConfig::from_json(GOOD).unwrap();
    assert_eq!(
        c.boot_source,
        BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: Some("/i".into()),
            boot_args: Some("console=ttyS0".into()),
        }
    );
    assert_eq!(c.machine_config.vcpu_count, 2);
    assert_eq!(c.machine_config.mem_size_mib, 256);
    assert_eq!(c.machine_config.huge_pages, HugePages::Transparent);
    assert!(c.drives.is_empty() && c.network_interfaces.is_empty());
    assert!(c.vsock.is_none() && c.balloon.is_none() && c.entropy.is_none());
    // Its JSON is the config file's shape again.
    let again = VmConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn huge_pages_by_firecracker_name() {
    let with = |hp: &str, extra: &str| {
        VmConfig::from_json(&format!(
            r#"{{"boot-source": {{"kernel_image_path": "/k"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": {hp}}}{extra}}}"#
        ))
    };
    let hp = |c: VmConfig| c.machine_config.huge_pages;
    assert_eq!(hp(with("\"None\"", "").unwrap()), HugePages::None);
    assert_eq!(hp(with("\"2M\"", "").unwrap()), HugePages::Hugetlb2M);
    assert_eq!(
        hp(with("\"Transparent\"", "").unwrap()),
        HugePages::Transparent
    );
    for bad in ["\"1G\"", "\"none\"", "2", "null"] {
        assert!(with(bad, "").is_err(), "accepted {bad}");
    }
    // hugetlbfs pages and a balloon do not go together.
    let e = with(
        "\"2M\"",
        r#", "balloon": {"amount_mib": 0, "deflate_on_oom": false}"#,
    );
    assert!(matches!(e, Err(ConfigError::HugePages(_))), "{e:?}");
    assert!(with(
        "\"Transparent\"",
        r#", "balloon": {"amount_mib": 0, "deflate_on_oom": false}"#
    )
    .is_ok());
    assert!(matches!(
        "2m".parse::<HugePages>(),
        Ok(HugePages::Hugetlb2M)
    ));
    assert!(matches!(
        "transparent".parse::<HugePages>(),
        Ok(HugePages::Transparent)
    ));
    assert!("huge".parse::<HugePages>().is_err());
}

#[test]
fn hugetlb_memory_is_whole_huge_pages() {
    let mut c = VmConfig::from_json(GOOD).unwrap();
    let two_m = MachineConfigUpdate {
        huge_pages: Some(HugePages::Hugetlb2M),
        ..Default::default()
    };
    c.update_machine_config(&two_m).unwrap();
    let odd = MachineConfigUpdate {
        mem_size_mib: Some(257),
        ..Default::default()
    };
    assert!(matches!(
        c.update_machine_config(&odd),
        Err(ConfigError::HugePages(_))
    ));
    assert_eq!(
        c.machine_config.mem_size_mib, 256,
        "a refused change changes nothing"
    );
}

#[test]
fn default_cmdline_and_empty_sections() {
    let c = VmConfig::from_json(
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "drives": [], "network-interfaces": [], "logger": null, "cpu-config": {}}"#,
    )
    .unwrap();
    assert_eq!(c.boot_source.cmdline(), DEFAULT_CMDLINE);
    assert_eq!(c.boot_source.initrd_path, None);
}

#[test]
fn rejects_bad_files() {
    let cases = [
        // unknown top-level key
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "bogus": 1}"#,
        // unknown nested key
        r#"{"boot-source": {"kernel_image_path": "/k", "kernel": 1}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
        // missing section
        r#"{"boot-source": {"kernel_image_path": "/k"}}"#,
        // missing field
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1}}"#,
        // wrong type
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": "two", "mem_size_mib": 128}}"#,
        // out of range
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 300, "mem_size_mib": 128}}"#,
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#,
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 8}}"#,
        // drive without its required fields
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "drives": [{"drive_id": "x"}]}"#,
        // vsock without its socket
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "vsock": {"guest_cid": 3}}"#,
        // a section condo does not implement, asking for something
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "mmds-config": {"network_interfaces": ["eth0"]}}"#,
        // SMT
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": true}}"#,
        // two root disks
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": true},
                       {"drive_id": "b", "path_on_host": "/b", "is_root_device": true}]}"#,
        "not json",
        "",
    ];
    for c in cases {
        assert!(VmConfig::from_json(c).is_err(), "accepted: {c}");
    }
}

#[test]
fn drives_and_disk_specs() {
    let c = VmConfig::from_json(
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "drives": [{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false},
                       {"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false, "is_read_only": true}],
            "entropy": {}}"#,
    )
    .unwrap();
    assert_eq!(c.drives.len(), 2);
    assert!(c.drives[0].is_root_device && !c.drives[0].is_read_only);
    assert!(c.drives[1].is_read_only);
    assert_eq!(c.drives[1].drive_id, "data");
    assert!(c.entropy.is_some());
    assert_eq!(
        c.kernel_cmdline(""),
        format!("{DEFAULT_CMDLINE} root=/dev/vda rw pci=off")
    );

    let d = Drive::from_spec("path=/x.img,readonly=on,id=abc", 0).unwrap();
    assert_eq!(
        (
            d.path_on_host.to_str(),
            d.is_read_only,
            d.drive_id.as_str(),
            d.is_root_device
        ),
        (Some("/x.img"), true, "abc", false)
    );
    assert_eq!(
        Drive::from_spec("path=/y", 3).unwrap().drive_id,
        "condo-disk-3"
    );
    let n = NetworkInterface::from_spec("tap=tap0,mac=06:00:ac:10:00:02", 0).unwrap();
    assert_eq!(
        (n.host_dev_name.as_str(), n.guest_mac),
        ("tap0", Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])))
    );
    for bad in [
        "mac=06:00:00:00:00:01",
        "tap=t,mac=06:00",
        "tap=t,mac=zz:00:00:00:00:00",
        "tap=t,x=1",
    ] {
        assert!(NetworkInterface::from_spec(bad, 0).is_err(), "{bad}");
    }
    for bad in [
        "",
        "readonly=on",
        "path=/x,readonly=maybe",
        "path=/x,color=red",
        "path",
    ] {
        assert!(Drive::from_spec(bad, 0).is_err(), "{bad}");
    }
    let mut c = VmConfig::default();
    let long = Drive {
        drive_id: "x".repeat(21),
        path_on_host: "/x".into(),
        ..Drive::default()
    };
    assert!(matches!(c.insert_drive(long), Err(ConfigError::DiskId(_))));
}

#[test]
fn interfaces_get_a_mac_by_position() {
    let mut c = VmConfig::default();
    for (i, tap) in ["t0", "t1"].into_iter().enumerate() {
        c.insert_network_interface(NetworkInterface::from_spec(&format!("tap={tap}"), i).unwrap())
            .unwrap();
    }
    assert_eq!(
        c.network_interfaces[1].guest_mac,
        Some(MacAddr([6, 0, 0, 0, 0, 2]))
    );
    assert_eq!(
        c.network_interfaces[1].guest_mac.unwrap().to_string(),
        "06:00:00:00:00:02"
    );
}

#[test]
fn machine_and_command_line_ranges() {
    let mut c = VmConfig::from_json(GOOD).unwrap();
    let set = |c: &mut VmConfig, vcpus: Option<u8>, mem: Option<u64>| {
        c.update_machine_config(&MachineConfigUpdate {
            vcpu_count: vcpus,
            mem_size_mib: mem,
            ..Default::default()
        })
    };
    assert!(matches!(
        set(&mut c, Some(33), None),
        Err(ConfigError::VcpuCount(33))
    ));
    assert!(matches!(
        set(&mut c, Some(32), Some(MAX_MEM_MIB + 1)),
        Err(ConfigError::MemSize(_))
    ));
    set(&mut c, Some(32), Some(5 * 1024)).unwrap();
    assert!(matches!(
        check_vcpu_count(300),
        Err(ConfigError::VcpuCount(300))
    ));
    let boot = |args: &str| BootSource {
        kernel_image_path: "/k".into(),
        initrd_path: None,
        boot_args: Some(args.into()),
    };
    assert!(matches!(
        c.set_boot_source(boot(&"x".repeat(5000))),
        Err(ConfigError::CmdlineTooLong(5000))
    ));
    assert!(matches!(
        c.set_boot_source(boot("a\0b")),
        Err(ConfigError::CmdlineInvalid)
    ));
    c.set_boot_source(boot("console=ttyS0 -- echo hi")).unwrap();
    assert_eq!(
        c.kernel_cmdline(" x=1"),
        "console=ttyS0 pci=off x=1 -- echo hi"
    );
    // A guest told otherwise keeps its word; init's arguments are not
    // kernel parameters.
    c.set_boot_source(boot("console=ttyS0 pci=nomsi -- pci=x"))
        .unwrap();
    assert_eq!(c.kernel_cmdline(""), "console=ttyS0 pci=nomsi -- pci=x");
    c.set_boot_source(boot("console=ttyS0 -- pci=x")).unwrap();
    assert_eq!(c.kernel_cmdline(""), "console=ttyS0 pci=off -- pci=x");
}

#[test]
fn vsock_and_balloon_from_flags_and_file() {
    let v = VsockConfig::from_spec("cid=3,socket=/run/v.sock").unwrap();
    assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/run/v.sock")));
    assert!(VsockConfig::from_spec("cid=x,socket=/s").is_err());
    assert!(VsockConfig::from_spec("socket=/s").is_err());
    assert!(VsockConfig::from_spec("cid=3").is_err());
    let b = BalloonConfig::from_spec("size_mib=64,deflate_on_oom=on,stats_s=1").unwrap();
    assert_eq!(
        b,
        BalloonConfig {
            amount_mib: 64,
            deflate_on_oom: true,
            stats_polling_interval_s: 1,
            free_page_hinting: false,
            free_page_reporting: false
        }
    );
    assert!(BalloonConfig::from_spec("size_mib=-1").is_err());
    assert!(BalloonConfig::from_spec("bogus=1").is_err());
    let c = VmConfig::from_json(
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "vsock": {"guest_cid": 7, "uds_path": "/v.sock"},
            "balloon": {"amount_mib": 16, "deflate_on_oom": false, "free_page_reporting": true}}"#,
    )
    .unwrap();
    assert_eq!(c.vsock.unwrap().guest_cid, 7);
    assert!(c.balloon.unwrap().free_page_reporting);
    for bad in [
        r#""vsock": {"guest_cid": 2, "uds_path": "/v"}"#,
        r#""vsock": {"guest_cid": 3}"#,
        r#""balloon": {"amount_mib": 4096, "deflate_on_oom": false}"#,
        r#""balloon": {"amount_mib": 1, "deflate_on_oom": false, "free_page_hinting": true}"#,
        r#""balloon": {"amount_mib": 1, "deflate_on_oom": false, "x": 1}"#,
    ] {
        let text = format!(
            r#"{{"boot-source": {{"kernel_image_path": "/k"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}, {bad}}}"#
        );
        assert!(VmConfig::from_json(&text).is_err(), "{bad}");
    }
    // Shrinking memory under a balloon is refused, whichever comes first.
    let mut c = VmConfig::default();
    c.set_balloon(BalloonConfig {
        amount_mib: 100,
        ..Default::default()
    })
    .unwrap();
    let small = MachineConfigUpdate {
        mem_size_mib: Some(64),
        ..Default::default()
    };
    assert!(matches!(
        c.update_machine_config(&small),
        Err(ConfigError::Balloon(_))
    ));
}
