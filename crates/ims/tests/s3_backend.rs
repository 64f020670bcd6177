//! The artifact store on a real S3 endpoint (moto's S3 server from PyPI, started by the test): the
//! configuration path a site uses for Ceph RGW or MinIO. Link validation, manifest validation, soft
//! delete (server-side moves), undelete and cascade deletes all go through S3.
//!
//! `scripts/test.sh` installs moto and sets `IMS_TEST_MOTO_SERVER`; without it this test fails
//! unless `IMS_TEST_SKIP_S3=1`.

mod common;
use common::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_moto() -> Option<Moto> {
    if std::env::var("IMS_TEST_SKIP_S3").is_ok_and(|v| v == "1") {
        return None;
    }
    let bin = std::env::var("IMS_TEST_MOTO_SERVER").expect(
        "IMS_TEST_MOTO_SERVER is not set: run the tests with scripts/test.sh (or set IMS_TEST_SKIP_S3=1)",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    // Owned by the guard from here on: killed and reaped on drop, also if start-up fails.
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(&moto.url).send().await.is_ok() {
            return Some(moto);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto_server did not start");
}

impl Moto {
    /// A signed S3 client for the test's own reads and writes.
    fn client(&self) -> ims_artifacts::ArtifactStore {
        ims_artifacts::ArtifactStore::new(ims_artifacts::Backend::S3(ims_artifacts::S3Settings {
            endpoint: self.url.clone(),
            region: "us-east-1".into(),
            access_key: "testing".into(),
            secret_key: "testing".into(),
            path_style: true,
            verify_tls: true,
        }))
    }
    fn loc(bucket: &str, key: &str) -> ims_artifacts::Location {
        ims_artifacts::Location::new(bucket, key).unwrap()
    }
    async fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        self.client()
            .put_small(&Self::loc(bucket, key), bytes::Bytes::copy_from_slice(data))
            .await
            .unwrap();
    }
    async fn exists(&self, bucket: &str, key: &str) -> bool {
        self.client()
            .head(&Self::loc(bucket, key))
            .await
            .unwrap()
            .is_some()
    }
    async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        match self
            .client()
            .read_small(&Self::loc(bucket, key), 1 << 20)
            .await
            .unwrap()
        {
            ims_artifacts::SmallRead::Data(b) => b.to_vec(),
            other => panic!("{bucket}/{key}: {other:?}"),
        }
    }
    async fn make_bucket(&self, bucket: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.url))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create bucket {bucket}: {}",
            r.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_service_on_s3() {
    let Some(moto) = start_moto().await else {
        return;
    };
    moto.make_bucket("ims").await;
    moto.make_bucket("boot-images").await;
    let s = builder(Db::Sqlite)
        .await
        .env("S3_ENDPOINT", &moto.url)
        .env("S3_ACCESS_KEY", "testing")
        .env("S3_SECRET_KEY", "testing")
        .env("S3_REGION", "us-east-1")
        .start()
        .await;

    // STS points clients (cray artifacts) at the configured S3 endpoint.
    let sts = s.send("PUT", "/apis/sts/token", None, None).await.ok(200);
    let c = &sts["Credentials"];
    assert_eq!(c["EndpointURL"], moto.url.as_str());
    assert_eq!(c["AccessKeyId"], "testing");
    assert_eq!(c["SecretAccessKey"], "testing");
    assert!(is_wire_time(c["Expiration"].as_str().unwrap()));

    // Recipe link validated by HEAD on S3; a missing object is a 422.
    s.post(
        "/v3/recipes",
        &json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                "link": {"path": "s3://ims/recipes/r1/recipe.tar.gz", "type": "s3"}}),
    )
    .await
    .problem(422, false);
    moto.put("ims", "recipes/r1/recipe.tar.gz", b"tarball")
        .await;
    let recipe = s
        .post(
            "/v3/recipes",
            &json!({"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                    "link": {"path": "s3://ims/recipes/r1/recipe.tar.gz", "type": "s3"}}),
        )
        .await
        .ok(201);

    // Image: manifest read from S3 and every artifact checked.
    let mut artifacts = vec![];
    for (name, mime) in [
        ("rootfs", "application/vnd.cray.image.rootfs.squashfs"),
        ("kernel", "application/vnd.cray.image.kernel"),
    ] {
        moto.put("boot-images", &format!("img1/{name}"), name.as_bytes())
            .await;
        artifacts.push(json!({"link": {"path": format!("s3://boot-images/img1/{name}"), "etag": "", "type": "s3"}, "type": mime, "md5": "00"}));
    }
    let manifest =
        json!({"version": "1.0", "created": "2024-01-01 00:00:00", "artifacts": artifacts});
    moto.put(
        "boot-images",
        "img1/manifest.json",
        manifest.to_string().as_bytes(),
    )
    .await;
    let link = json!({"path": "s3://boot-images/img1/manifest.json", "etag": "", "type": "s3"});
    let img = s
        .post("/v3/images", &json!({"name": "i", "link": link}))
        .await
        .ok(201);
    let id = img["id"].as_str().unwrap();

    // Soft delete moves everything under deleted/ on S3 and writes the deleted manifest there.
    s.delete(&format!("/v3/images/{id}")).await.ok(204);
    assert!(!moto.exists("boot-images", "img1/rootfs").await);
    assert!(moto.exists("boot-images", "deleted/img1/rootfs").await);
    assert!(
        moto.exists("boot-images", "deleted/img1/manifest.json")
            .await
    );
    let dm: serde_json::Value = serde_json::from_slice(
        &moto
            .get(
                "boot-images",
                &format!("deleted/{id}/deleted_manifest.json"),
            )
            .await,
    )
    .unwrap();
    assert_eq!(dm["artifacts"].as_array().unwrap().len(), 3);
    let d = s.get(&format!("/v3/deleted/images/{id}")).await.ok(200);
    assert_eq!(
        d["link"]["path"],
        format!("s3://boot-images/deleted/{id}/deleted_manifest.json")
    );

    // Undelete moves them back.
    s.patch(
        &format!("/v3/deleted/images/{id}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    assert!(moto.exists("boot-images", "img1/rootfs").await);
    assert!(
        !moto
            .exists(
                "boot-images",
                &format!("deleted/{id}/deleted_manifest.json")
            )
            .await
    );
    let back = s.get(&format!("/v3/images/{id}")).await.ok(200);
    assert_eq!(back["link"]["path"], "s3://boot-images/img1/manifest.json");

    // v2 cascade delete removes every artifact and the manifest from S3.
    s.delete(&format!("/v2/images/{id}")).await.ok(204);
    for k in ["img1/rootfs", "img1/kernel", "img1/manifest.json"] {
        assert!(!moto.exists("boot-images", k).await, "{k} deleted");
    }
    // Recipe soft delete and purge.
    let rid = recipe["id"].as_str().unwrap();
    s.delete(&format!("/v3/recipes/{rid}")).await.ok(204);
    assert!(moto.exists("ims", "deleted/recipes/r1/recipe.tar.gz").await);
    s.delete(&format!("/v3/deleted/recipes/{rid}"))
        .await
        .ok(204);
    assert!(!moto.exists("ims", "deleted/recipes/r1/recipe.tar.gz").await);
}
