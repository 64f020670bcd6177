//! The artifact store on a real S3 endpoint (moto's S3 server from PyPI, started by the test): the
//! configuration path a site uses for Ceph RGW or MinIO. Link validation, manifest validation, soft
//! delete (server-side moves), undelete and cascade deletes all go through S3.
//!
//! `scripts/test.sh` installs moto and sets `IMS_TEST_MOTO_SERVER`; without it this test fails
//! unless `IMS_TEST_SKIP_S3=1`.

use crate::common::*;
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
    start_moto_with(&[]).await
}

/// moto with extra environment (its settings, e.g. `S3_UPLOAD_PART_MIN_SIZE`).
async fn start_moto_with(env: &[(&str, &str)]) -> Option<Moto> {
    if std::env::var("IMS_TEST_SKIP_S3").is_ok_and(|v| v == "1") {
        return None;
    }
    let bin = std::env::var("IMS_TEST_MOTO_SERVER").expect(
        "IMS_TEST_MOTO_SERVER is not set: run the tests with scripts/test.sh (or set IMS_TEST_SKIP_S3=1)",
    );
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .envs(env.iter().copied())
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
        ims_artifacts::ArtifactStore::new(ims_artifacts::Storage::S3(ims_artifacts::S3Settings {
            endpoint: self.url.clone(),
            region: "us-east-1".into(),
            access_key: "testing".into(),
            secret_key: "testing".into(),
            path_style: true,
            verify_tls: true,
            copy_multipart_threshold: ims_artifacts::MAX_SINGLE_COPY,
            copy_part_size: ims_artifacts::DEFAULT_COPY_PART,
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
    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("job.key");
    std::fs::write(&key_file, KEY_HEX).unwrap();
    let s = builder(Db::Sqlite)
        .await
        .env("S3_ENDPOINT", &moto.url)
        .env("S3_ACCESS_KEY", "testing")
        .env("S3_SECRET_KEY", "testing")
        .env("S3_REGION", "us-east-1")
        .env("IMS_JOB_TOKEN_KEY_FILE", key_file.to_str().unwrap())
        .start()
        .await;

    // The site's keys are not handed to an anonymous caller, only to an authenticated one (here
    // a job's agent); STS points clients (cray artifacts) at the configured S3 endpoint.
    let p = s
        .send("PUT", "/apis/sts/token", None, None)
        .await
        .problem(403, false);
    assert!(!p.to_string().contains("testing"), "{p}");

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

    // A job's agent gets the site's keys (they cannot be confined here: the site's bucket policy
    // must do it, docs/compatibility.md), and the id of the image it is to write.
    let pk = s
        .post(
            "/v3/public-keys",
            &json!({"name": "k", "public_key": PUBLIC_KEY}),
        )
        .await
        .ok(201);
    let job = s
        .post(
            "/v3/jobs",
            &json!({"job_type": "customize", "artifact_id": id, "public_key_id": pk["id"],
                    "image_root_archive_name": "x"}),
        )
        .await
        .ok(201);
    let token = job_token(KEY_HEX, job["id"].as_str().unwrap());
    let r = s
        .client
        .put(format!("{}/apis/sts/token", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let sts: serde_json::Value = r.json().await.unwrap();
    let c = &sts["Credentials"];
    assert_eq!(c["EndpointURL"], moto.url.as_str());
    assert_eq!(c["AccessKeyId"], "testing");
    assert_eq!(c["SecretAccessKey"], "testing");
    assert!(is_wire_time(c["Expiration"].as_str().unwrap()));
    assert_eq!(sts["ImsJob"]["Confined"], false);
    assert!(is_uuid4(sts["ImsJob"]["ImageId"].as_str().unwrap()));
    s.delete(&format!("/v3/jobs/{}", job["id"].as_str().unwrap()))
        .await
        .ok(204);

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

impl Moto {
    /// A signed request to moto, with an empty body.
    async fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> ims_artifacts::sigv4::Answer {
        let signer = ims_artifacts::sigv4::Signer {
            endpoint: &self.url,
            region: "us-east-1",
            access_key: "testing",
            secret_key: "testing",
            token: "",
        };
        ims_artifacts::sigv4::send(
            &reqwest::Client::new(),
            &signer,
            method,
            path,
            query,
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap()
    }

    /// The multipart uploads in progress in a bucket.
    async fn uploads(&self, bucket: &str) -> usize {
        let a = self
            .signed(
                reqwest::Method::GET,
                &format!("/{bucket}"),
                &[("uploads", "")],
            )
            .await;
        assert!(a.status.is_success(), "{}", a.body);
        a.body.matches("<UploadId>").count()
    }

    /// A whole object (up to 64 MiB).
    async fn bytes(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self
            .client()
            .read_small(&Self::loc(bucket, key), 64 << 20)
            .await
            .unwrap()
        {
            ims_artifacts::SmallRead::Data(b) => Some(b.to_vec()),
            ims_artifacts::SmallRead::NotFound => None,
            other => panic!("{bucket}/{key}: {other:?}"),
        }
    }
}

/// Moves of objects above `IMS_S3_COPY_MULTIPART_THRESHOLD` are multipart copies (UploadPartCopy,
/// issue 11 item 8): contents and metadata (content type, `md5sum`) are kept; a copy that fails
/// (here: moto refuses parts smaller than its minimum at completion) is aborted, leaving the
/// source as it was and no upload behind, and the soft delete is completed by the journal once
/// copies work (a restart with a valid part size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_move_by_multipart_copy() {
    const MIB: usize = 1 << 20;
    let Some(moto) = start_moto_with(&[("S3_UPLOAD_PART_MIN_SIZE", "6291456")]).await else {
        return;
    };
    moto.make_bucket("ims").await;
    moto.make_bucket("boot-images").await;
    // A 13 MiB rootfs with the metadata `cray artifacts create` gives it.
    let rootfs: Vec<u8> = (0..13 * MIB + 7).map(|i| (i * 7 % 251) as u8).collect();
    let md5 = {
        use md5::Digest;
        let d = md5::Md5::digest(&rootfs);
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let put = reqwest::Client::new()
        .put(format!("{}/boot-images/big/rootfs", moto.url))
        .header("content-type", "application/vnd.cray.image.rootfs.squashfs")
        .header("x-amz-meta-md5sum", &md5)
        .body(rootfs.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    moto.put("boot-images", "big/kernel", b"kernel").await;
    let manifest = json!({"version": "1.0", "created": "2024-01-01 00:00:00", "artifacts": [
        {"link": {"path": "s3://boot-images/big/rootfs", "etag": "", "type": "s3"},
         "type": "application/vnd.cray.image.rootfs.squashfs", "md5": md5},
        {"link": {"path": "s3://boot-images/big/kernel", "etag": "", "type": "s3"},
         "type": "application/vnd.cray.image.kernel", "md5": "00"}]});
    moto.put(
        "boot-images",
        "big/manifest.json",
        manifest.to_string().as_bytes(),
    )
    .await;
    let with_part = |part: &str| {
        let part = part.to_string();
        let url = moto.url.clone();
        async move {
            builder(Db::Sqlite)
                .await
                .env("S3_ENDPOINT", &url)
                .env("S3_ACCESS_KEY", "testing")
                .env("S3_SECRET_KEY", "testing")
                .env("IMS_S3_COPY_MULTIPART_THRESHOLD", "8MiB")
                .env("IMS_S3_COPY_PART_SIZE", &part)
        }
    };
    // Parts of 5 MiB: moto (minimum 6 MiB here) refuses the completion.
    let mut s = with_part("5MiB").await.start().await;
    let img = s
        .post(
            "/v3/images",
            &json!({"name": "big", "link": {"path": "s3://boot-images/big/manifest.json", "type": "s3"}}),
        )
        .await
        .ok(201);
    let id = img["id"].as_str().unwrap().to_string();
    let p = s
        .delete(&format!("/v3/images/{id}"))
        .await
        .problem(500, false);
    assert!(p["detail"].as_str().unwrap().contains("retries it"), "{p}");
    let head = |key: &str| {
        let path = format!("/boot-images/{key}");
        let moto = &moto;
        async move { moto.signed(reqwest::Method::HEAD, &path, &[]).await }
    };
    let body = |key: &str| {
        let key = key.to_string();
        let moto = &moto;
        async move { moto.bytes("boot-images", &key).await }
    };
    assert!(
        body("big/rootfs").await == Some(rootfs.clone()),
        "source intact"
    );
    assert_eq!(head("deleted/big/rootfs").await.status, 404, "no copy left");
    assert_eq!(moto.uploads("boot-images").await, 0, "upload aborted");
    assert!(moto.exists("boot-images", "big/kernel").await);

    // Valid parts: the restarted server completes the soft delete from its journal.
    s.stop();
    let data = std::mem::replace(&mut s.data, tempfile::tempdir().unwrap());
    let mut b = with_part("6MiB").await;
    b.data = data;
    let s = b.start().await;
    let moved = head("deleted/big/rootfs").await;
    assert_eq!(moved.status, 200);
    let etag = moved.headers["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert!(etag.ends_with("-3"), "three copied parts: {etag}");
    assert_eq!(
        moved.headers["content-type"],
        "application/vnd.cray.image.rootfs.squashfs"
    );
    assert_eq!(moved.headers["x-amz-meta-md5sum"], md5.as_str());
    assert!(
        body("deleted/big/rootfs").await == Some(rootfs.clone()),
        "copy identical"
    );
    assert_eq!(head("big/rootfs").await.status, 404);
    assert_eq!(moto.uploads("boot-images").await, 0);
    let dm: serde_json::Value = serde_json::from_slice(
        &body(&format!("deleted/{id}/deleted_manifest.json"))
            .await
            .unwrap(),
    )
    .unwrap();
    let listed: Vec<&str> = dm["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["link"]["path"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"s3://boot-images/deleted/big/rootfs"),
        "{dm}"
    );
    assert_eq!(
        dm["artifacts"][0]["link"]["etag"]
            .as_str()
            .unwrap()
            .trim_matches('"'),
        etag
    );

    // Undelete moves it back the same way.
    s.patch(
        &format!("/v3/deleted/images/{id}"),
        &json!({"operation": "undelete"}),
    )
    .await
    .ok(204);
    let back = head("big/rootfs").await;
    assert_eq!(back.status, 200);
    assert_eq!(back.headers["x-amz-meta-md5sum"], md5.as_str());
    assert_eq!(
        back.headers["content-type"],
        "application/vnd.cray.image.rootfs.squashfs"
    );
    assert!(
        body("big/rootfs").await == Some(rootfs.clone()),
        "restored identical"
    );
    assert_eq!(head("deleted/big/rootfs").await.status, 404);
    assert_eq!(moto.uploads("boot-images").await, 0);
    let rec = s.get(&format!("/v3/images/{id}")).await.ok(200);
    assert_eq!(rec["link"]["path"], "s3://boot-images/big/manifest.json");
}
