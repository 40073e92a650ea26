//! What the OCI runtime reads from files others write: a bundle's
//! config.json (and what the VM and the agent get from it), an exec
//! process file, a state file under --root, the runtime's configuration,
//! a request on a monitor's control socket.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = oci::spec::Spec::parse(data) {
        let _ = spec.memory_limit();
        let _ = spec.cpu_count();
        let _ = oci::guest::vm::vm_size(&oci::config::RuntimeConfig::default(), &spec);
        // Mounts naming host files would read them: only the rest.
        if spec.mounts.iter().all(|m| m.source.is_none()) {
            let _ = oci::guest::agent::container_setup(&spec);
        }
        if let Some(path) = spec.linux.as_ref().and_then(|l| l.cgroups_path.as_deref()) {
            let _ = oci::cgroup::relative_path(path, false, "id");
            let _ = oci::cgroup::relative_path(path, true, "id");
        }
    }
    let _ = oci::spec::Process::parse(data);
    let _ = oci::state::Saved::parse("id", data);
    let _ = oci::config::RuntimeConfig::parse(data);
    let _ = serde_json::from_slice::<oci::control::Request>(data);
});
