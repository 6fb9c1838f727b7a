//! Chained CNI plugin that asks the node agent to enroll a pod (see `mesh_cni::plugin`).

use std::io::Read;

fn main() {
    // The runtime speaks through CNI_* variables and stdin; a person asking for the version gets it.
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("mesh-cni {}", mesh_primitives::version!());
        return;
    }
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let result =
        mesh_cni::plugin::CniEnv::from_env().and_then(|env| mesh_cni::plugin::run(&env, &stdin));
    match result {
        Ok(out) => print!("{out}"),
        Err(e) => {
            print!(
                "{}",
                serde_json::json!({"cniVersion": "1.0.0", "code": e.code(), "msg": e.to_string()})
            );
            std::process::exit(1);
        }
    }
}
