//! Runs the endpoint on its own, for trying clients against it and for measurements:
//!
//! ```text
//! cargo run --release -p ims-s3 --example serve -- ROOT STATE_DIR [ADDR]
//! ```
//!
//! The long-lived credentials are kept in `STATE_DIR.credentials.json` (next to the state
//! directory) and printed as shell exports. Stops on Ctrl-C.

use std::sync::Arc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, state, rest @ ..] = args.as_slice() else {
        eprintln!("usage: serve ROOT STATE_DIR [ADDR]");
        std::process::exit(2);
    };
    let addr = rest.first().map_or("127.0.0.1:0", String::as_str);
    let creds = Arc::new(ims_s3::CredentialStore::open(std::path::Path::new(
        &format!("{state}.credentials.json"),
    ))?);
    let svc = ims_s3::service(
        ims_s3::S3Config {
            root: root.into(),
            state_dir: state.into(),
        },
        creds.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let root_creds = creds.root();
    println!("export AWS_ENDPOINT_URL=http://{}", listener.local_addr()?);
    println!("export AWS_ACCESS_KEY_ID={}", root_creds.access_key);
    println!("export AWS_SECRET_ACCESS_KEY={}", root_creds.secret_key);
    ims_s3::serve(listener, svc, ims_s3::Limits::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
