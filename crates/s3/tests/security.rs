//! Authentication, temporary credentials, presigned URLs and path traversal against the built-in
//! S3 endpoint, with boto3 and raw signed requests.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_are_refused() {
    let Some(srv) = start().await else { return };
    srv.py(
        r#"
s3.create_bucket(Bucket='ims')
s3.put_object(Bucket='ims', Key='obj', Body=b'secret')
for method, path, body in [('GET', '/', b''), ('GET', '/ims', b''), ('GET', '/ims/obj', b''), ('HEAD', '/ims/obj', b''),
                           ('PUT', '/ims/anon', b'data'), ('DELETE', '/ims/obj', b''), ('PUT', '/newbucket', b'')]:
    status, _, data = raw(method, path, body=body, sign=False)
    assert status == 403, (method, path, status, data)
    if method != 'HEAD':
        assert b'AccessDenied' in data, data
# A browser-form POST upload is not accepted either (and is not buffered).
form = (b'--XX\r\nContent-Disposition: form-data; name="key"\r\n\r\nposted\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n' + b'z' * 100000 + b'\r\n--XX--\r\n')
status, _, data = raw('POST', '/ims', body=form, headers={'Content-Type': 'multipart/form-data; boundary=XX'}, sign=False)
assert 400 <= status < 500, (status, data)
# A SigV2 presigned URL with a made-up signature.
status, _, data = raw('GET', '/ims/obj?AWSAccessKeyId=%s&Expires=9999999999&Signature=eA%%3D%%3D' % AK, sign=False)
assert status == 403, (status, data)
"#,
    )
    .await;
    assert_eq!(files_under(&srv.root()), ["ims/obj"]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_credentials_are_enforced() {
    let Some(srv) = start().await else { return };
    let expired = srv.creds.issue(Duration::ZERO);
    let short = srv.creds.issue(Duration::from_secs(2));
    let env = [
        ("X_AK", expired.access_key.as_str()),
        ("X_SK", expired.secret_key.as_str()),
        ("X_TOK", expired.session_token.as_deref().unwrap()),
        ("S_AK", short.access_key.as_str()),
        ("S_SK", short.secret_key.as_str()),
        ("S_TOK", short.session_token.as_deref().unwrap()),
    ];
    srv.py_env(
        r#"
s3.create_bucket(Bucket='ims')
t = client(TAK, TSK, TOK, region='')
t.put_object(Bucket='ims', Key='k', Body=b'v')
assert t.get_object(Bucket='ims', Key='k')['Body'].read() == b'v'

# The session token is required and must be the one issued with the key.
assert err(client(TAK, TSK).get_object, Bucket='ims', Key='k') == ('AccessDenied', 403)
assert err(client(TAK, TSK, TOK[:-1] + ('A' if TOK[-1] != 'A' else 'B')).get_object, Bucket='ims', Key='k') == ('InvalidToken', 400)
assert err(client(TAK, TSK, 'short').put_object, Bucket='ims', Key='forged', Body=b'x')[0] == 'InvalidToken'
# Another key's token does not help either.
assert err(client(TAK, TSK, os.environ['S_TOK']).get_object, Bucket='ims', Key='k')[0] == 'InvalidToken'
# Wrong secret, unknown key, expired credentials.
assert err(client(TAK, 'wrong' * 8, TOK).get_object, Bucket='ims', Key='k') == ('SignatureDoesNotMatch', 403)
assert err(client('IMTUNKNOWNKEY0000000', 'x' * 40, TOK).get_object, Bucket='ims', Key='k') == ('InvalidAccessKeyId', 403)
assert err(client(os.environ['X_AK'], os.environ['X_SK'], os.environ['X_TOK']).list_objects, Bucket='ims')[0] == 'ExpiredToken'
s = client(os.environ['S_AK'], os.environ['S_SK'], os.environ['S_TOK'])
assert s.get_object(Bucket='ims', Key='k')['Body'].read() == b'v'
time.sleep(2.5)
assert err(s.get_object, Bucket='ims', Key='k')[0] == 'ExpiredToken'
# The long-lived key needs no token.
assert s3.get_object(Bucket='ims', Key='k')['Body'].read() == b'v'
assert err(s3.head_object, Bucket='ims', Key='forged')[1] == 404
"#,
        &env,
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_get() {
    let Some(srv) = start().await else { return };
    srv.py(
        r#"
s3.create_bucket(Bucket='boot-images')
s3.put_object(Bucket='boot-images', Key='img/kernel', Body=b'vmlinuz')
def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
# boto3 presigns with SigV2 query auth by default (as the Cray CLI does); SigV4 on request.
for version in [None, 's3v4']:
    cfg = Config(signature_version=version) if version else None
    root = boto3.client('s3', endpoint_url=EP, aws_access_key_id=AK, aws_secret_access_key=SK, region_name='us-east-1', config=cfg)
    url = root.generate_presigned_url('get_object', Params={'Bucket': 'boot-images', 'Key': 'img/kernel'}, ExpiresIn=300)
    r = fetch(url); assert r == (200, b'vmlinuz'), (version, url, r)
    assert fetch(url.replace('img/kernel', 'img/other'))[0] == 403
    temp = boto3.client('s3', endpoint_url=EP, aws_access_key_id=TAK, aws_secret_access_key=TSK, aws_session_token=TOK,
                        region_name='', config=cfg)
    url = temp.generate_presigned_url('get_object', Params={'Bucket': 'boot-images', 'Key': 'img/kernel'}, ExpiresIn=300)
    assert 'security-token=' in url.lower(), url
    r = fetch(url); assert r == (200, b'vmlinuz'), (version, url, r)
    stripped = re.sub(r'&?[Xx]-[Aa]mz-[Ss]ecurity-[Tt]oken=[^&]*', '', url)
    assert fetch(stripped)[0] == 403, (version, stripped)
    forged = re.sub(r'([Xx]-[Aa]mz-[Ss]ecurity-[Tt]oken=)[^&]*', r'\1forged', url)
    assert fetch(forged)[0] in (400, 403), (version, forged)
short = client().generate_presigned_url('get_object', Params={'Bucket': 'boot-images', 'Key': 'img/kernel'}, ExpiresIn=1)
time.sleep(2.5)
assert fetch(short)[0] == 403
"#,
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_are_rejected() {
    let Some(srv) = start().await else { return };
    srv.py(
        r#"
s3.create_bucket(Bucket='victim')
s3.create_bucket(Bucket='attacker')
s3.put_object(Bucket='victim', Key='secret', Body=b'original', Metadata={'md5sum': md5(b'original')})

paths = ['/attacker/%2e%2e/victim/secret', '/attacker/%2E%2E/victim/secret', '/attacker/..%2fvictim%2fsecret',
         '/attacker/a/../../victim/secret', '/attacker/a/%2e%2e/%2e%2e/victim/secret', '/attacker/a%2f..%2f..%2fvictim%2fsecret',
         '/attacker/../victim/secret', '/attacker/%2e%2e/%2e%2e/escaped', '/attacker/..', '/attacker/%2e%2e',
         '/attacker/.', '/attacker/./x', '/attacker//etc/passwd', '/attacker/a//b', '/attacker/a%5c..%5c..%5cx',
         '/attacker/a%00b', '/attacker/dir/', '/attacker/' + 'k' * 1025, '/attacker/' + 'k' * 256 + '/x']
for p in paths:
    for method, body in [('PUT', b'evil'), ('GET', b''), ('DELETE', b''), ('POST', b'')]:
        q = p + ('?uploads' if method == 'POST' else '')
        status, _, data = raw(method, q, body=body)
        # Refused by the key check itself (not by a signature mismatch or a later failure).
        codes = re.findall(rb'<Code>(.*?)</Code>', data)
        assert status == 400 and codes in ([b'InvalidArgument'], [b'KeyTooLongError']), (method, q, status, data)
# The same through boto3 (keys as an application would pass them).
for key in ['../victim/secret', '..', '.', 'a/../../victim/secret', '/abs', 'a//b', 'x/', 'a\\..\\b']:
    code, status = err(s3.put_object, Bucket='attacker', Key=key, Body=b'evil')
    assert status == 400, (key, code, status)
    assert err(s3.get_object, Bucket='attacker', Key=key)[1] == 400, key
    assert err(s3.create_multipart_upload, Bucket='attacker', Key=key)[1] == 400, key
    assert err(s3.copy_object, Bucket='attacker', Key='c', CopySource={'Bucket': 'attacker', 'Key': key})[1] == 400, key
assert err(s3.copy_object, Bucket='attacker', Key='../victim/secret', CopySource={'Bucket': 'victim', 'Key': 'secret'})[1] == 400
# Bucket names with traversal never reach the file system.
for p in ['/..%2fvictim/secret', '/%2e%2e/victim/secret', '/../victim/secret']:
    status, _, data = raw('GET', p)
    assert status in (400, 404), (p, status, data)
# A listing prefix cannot climb out either.
assert s3.list_objects_v2(Bucket='attacker', Prefix='../')['KeyCount'] == 0
assert s3.list_objects_v2(Bucket='attacker', Prefix='../victim/')['KeyCount'] == 0
h = s3.head_object(Bucket='victim', Key='secret')
assert h['Metadata'] == {'md5sum': md5(b'original')}
assert s3.get_object(Bucket='victim', Key='secret')['Body'].read() == b'original'
"#,
    )
    .await;
    // Nothing was written anywhere but the one legitimate object; the server still works.
    assert_eq!(files_under(&srv.root()), ["victim/secret"]);
    assert_eq!(
        std::fs::read(srv.root().join("victim/secret")).unwrap(),
        b"original"
    );
    let top: Vec<String> = std::fs::read_dir(srv.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut top = top;
    top.sort();
    assert_eq!(top, ["root", "s3-credentials.json", "state", "work"]);
    assert!(files_under(&srv.state().join("tmp")).is_empty());
    assert!(files_under(&srv.state().join("uploads")).is_empty());
    srv.py("assert s3.get_object(Bucket='victim', Key='secret')['Body'].read() == b'original'")
        .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_in_the_root_are_not_followed() {
    let Some(srv) = start().await else { return };
    let outside = srv.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    std::fs::create_dir_all(srv.root().join("ims")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), srv.root().join("ims/file-link")).unwrap();
    std::os::unix::fs::symlink(&outside, srv.root().join("ims/dir-link")).unwrap();
    std::os::unix::fs::symlink(&outside, srv.root().join("linked-bucket")).unwrap();
    srv.py(r#"
assert err(s3.get_object, Bucket='ims', Key='file-link')[1] == 404
assert err(s3.get_object, Bucket='ims', Key='dir-link/secret')[1] == 404
assert err(s3.get_object, Bucket='linked-bucket', Key='secret')[1] == 404
assert err(s3.put_object, Bucket='ims', Key='dir-link/new', Body=b'x')[1] == 400
assert s3.list_objects_v2(Bucket='ims')['KeyCount'] == 0
assert [b['Name'] for b in s3.list_buckets()['Buckets']] == ['ims']
"#)
        .await;
    assert_eq!(files_under(&outside), ["secret"]);
    srv.stop().await;
}
