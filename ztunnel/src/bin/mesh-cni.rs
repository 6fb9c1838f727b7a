//! Chained CNI plugin that enrolls a pod in the mesh (see `ztunnel::cni`).

use std::io::Read;

fn main() {
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let result = ztunnel::cni::CniEnv::from_env().and_then(|env| ztunnel::cni::run(&env, &stdin));
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
