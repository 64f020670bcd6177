//! Examples for every command's `--help`, in one table (a test checks that every command has
//! some).

/// (command path, example lines `command  # what it does`).
const EXAMPLES: &[(&str, &str)] = &[
    ("serve", "ims serve                                   # embedded: SQLite, built-in S3, local jobs, ./ims-data
ims serve --data-dir /var/lib/ims           # the system location (see README)
IMS_API_TOKEN=$(cat /etc/ims/token) ims serve --listen 0.0.0.0:9000"),
    ("migrate import", "ims migrate import ./ims-data-export       # the original's v2_*.json data files"),
    ("migrate export", "ims migrate export /tmp/ims-export          # write every record as the original's data files"),
    ("s3-credentials", "ims s3-credentials --data-dir /var/lib/ims  # keys and endpoint for aws, rclone, boto3"),
    ("agent run", "ims agent run 0f2d8c3b-…                   # started by an executor, not by hand"),
    ("agent node-probe", "ims agent node-probe                        # on a build node, run over SSH by the server"),
    ("agent node-run", "echo '{\"env\":{\"IMS_URL\":…,\"IMS_TOKEN\":…}}' | ims agent node-run 0f2d8c3b-…"),
    ("agent node-stop", "ims agent node-stop --grace 10 0f2d8c3b-… # stop the job's agent, remove its directory"),
    ("images list", "ims images list
ims images list --format table"),
    ("images describe", "ims images describe debian12-minbase        # by name when one image has it
ims images describe 5b0a1d6e-3c9f-4f7e-9a41-0f2d8c3b7e11 --format json"),
    ("images create", "ims images create --name base --link-type s3 --link-path s3://boot-images/ID/manifest.json"),
    ("images update", "ims images update ID --arch aarch64
ims images update ID --metadata-operation set --metadata-key site --metadata-value lab"),
    ("images delete", "ims images delete ID                        # soft delete: ims deleted images update ID --operation undelete"),
    ("images deleteall", "ims images deleteall --yes"),
    ("images verify", "ims images verify debian12-minbase          # re-read every artifact, check md5 and sha256"),
    ("images import", "ims images import debian12 ./rootfs.squashfs
ims images import debian12 ./rootfs/ --compression xz
ims images import debian12 ./root.tar.zst --kernel ./vmlinuz --initrd ./initrd.img"),
    ("images shell", "ims images shell debian12-minbase           # jailed shell in the image root
ims images shell 5b0a1d6e-… --no-jail --name v2 # the image root at /mnt/image/image-root
ims images shell --job 0f2d8c3b-…           # connect again to a waiting job
ims images shell base --fail-on-error       # a non-zero exit fails the job"),
    ("recipes list", "ims recipes list --format table"),
    ("recipes describe", "ims recipes describe sles15-barebones"),
    ("recipes create", "ims recipes create --name sles15 --recipe-type kiwi-ng --linux-distribution sles15 \\
    --link-type s3 --link-path s3://ims/recipes/ID/recipe.tar.gz"),
    ("recipes update", "ims recipes update ID --template-dictionary-key CSM_RELEASE_VERSION --template-dictionary-value 1.6"),
    ("recipes import", "ims recipes import debian12 ./kiwi-description/ --linux-distribution debian12"),
    ("recipes delete", "ims recipes delete ID"),
    ("recipes deleteall", "ims recipes deleteall --yes"),
    ("public-keys list", "ims public-keys list"),
    ("public-keys describe", "ims public-keys describe admin@ncn-m001"),
    ("public-keys create", "ims public-keys create --name \"$USER@$(hostname)\" --public-key ~/.ssh/id_ed25519.pub"),
    ("public-keys delete", "ims public-keys delete ID"),
    ("public-keys deleteall", "ims public-keys deleteall --yes"),
    ("jobs list", "ims jobs list --format table"),
    ("jobs describe", "ims jobs describe ID"),
    ("jobs create", "ims jobs create --job-type customize --artifact-id IMAGE_ID --public-key-id KEY_ID \\
    --image-root-archive-name new-image --ssh-containers-jail True --wait
ims jobs create --job-type create --artifact-id RECIPE_ID --public-key-id KEY_ID \\
    --image-root-archive-name built-image"),
    ("jobs delete", "ims jobs delete ID                          # stops the job and removes what it left"),
    ("jobs complete", "ims jobs complete ID                        # as touching /tmp/complete in a jailed session"),
    ("jobs fail", "ims jobs fail ID                            # as touching /tmp/failed"),
    ("jobs logs", "ims jobs logs ID
ims jobs logs ID --follow                   # until the job ends; exit 1 if it ends in error"),
    ("jobs deleteall", "ims jobs deleteall --status success --age 1w --yes"),
    ("remote-build-nodes list", "ims remote-build-nodes list"),
    ("remote-build-nodes describe", "ims remote-build-nodes describe x3000c0s1b0n0"),
    ("remote-build-nodes create", "ims remote-build-nodes create --xname x3000c0s1b0n0
ims remote-build-nodes create --xname x3000c0s1b0n0 --capacity 2 --drained true"),
    ("remote-build-nodes update", "ims remote-build-nodes update x3000c0s1b0n0 --capacity 4
ims remote-build-nodes update x3000c0s1b0n0 --capacity-default   # back to the probed default
ims remote-build-nodes update x3000c0s1b0n0 --drained false"),
    ("remote-build-nodes drain", "ims remote-build-nodes drain x3000c0s1b0n0     # no new jobs; running ones finish
ims remote-build-nodes status describe x3000c0s1b0n0   # reservedSlots = 0: nothing runs there
ims remote-build-nodes delete x3000c0s1b0n0"),
    ("remote-build-nodes undrain", "ims remote-build-nodes undrain x3000c0s1b0n0   # takes new jobs again"),
    ("remote-build-nodes host-key show", "ims remote-build-nodes host-key show x3000c0s1b0n0
ims remote-build-nodes host-key show x3000c0s1b0n0 --format table"),
    ("remote-build-nodes host-key accept", "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub   # on the node's console
ims remote-build-nodes host-key accept x3000c0s1b0n0 --fingerprint SHA256:…"),
    ("remote-build-nodes delete", "ims remote-build-nodes delete x3000c0s1b0n0     # refused while jobs run there: drain it first"),
    ("remote-build-nodes deleteall", "ims remote-build-nodes deleteall --yes"),
    ("remote-build-nodes status list", "ims remote-build-nodes status list"),
    ("remote-build-nodes status describe", "ims remote-build-nodes status describe x3000c0s1b0n0"),
    ("deleted images list", "ims deleted images list"),
    ("deleted images describe", "ims deleted images describe ID"),
    ("deleted images update", "ims deleted images update ID --operation undelete"),
    ("deleted images delete", "ims deleted images delete ID                # purge for good"),
    ("deleted images deleteall", "ims deleted images deleteall --yes"),
    ("deleted recipes list", "ims deleted recipes list"),
    ("deleted recipes describe", "ims deleted recipes describe ID"),
    ("deleted recipes update", "ims deleted recipes update ID --operation undelete"),
    ("deleted recipes delete", "ims deleted recipes delete ID               # purge for good"),
    ("deleted recipes deleteall", "ims deleted recipes deleteall --yes"),
    ("deleted public-keys list", "ims deleted public-keys list"),
    ("deleted public-keys describe", "ims deleted public-keys describe ID"),
    ("deleted public-keys update", "ims deleted public-keys update ID --operation undelete"),
    ("deleted public-keys delete", "ims deleted public-keys delete ID           # purge for good"),
    ("deleted public-keys deleteall", "ims deleted public-keys deleteall --yes"),
    ("version list", "ims version list"),
    ("artifacts buckets list", "ims artifacts buckets list"),
    ("artifacts list", "ims artifacts list boot-images"),
    ("artifacts describe", "ims artifacts describe boot-images ID/manifest.json"),
    ("artifacts create", "ims artifacts create boot-images ID/rootfs ./rootfs.squashfs"),
    ("artifacts get", "ims artifacts get boot-images ID/manifest.json ./manifest.json"),
    ("artifacts delete", "ims artifacts delete boot-images ID/rootfs"),
    ("config set", "ims config set url=http://ims.site:9000 token=\"$(cat /etc/ims/token)\""),
    ("config get", "ims config get
ims config get url"),
];

/// Adds each command's examples to its `--help` (after the options).
pub fn add(c: clap::Command) -> clap::Command {
    add_at(c, "")
}

fn add_at(mut c: clap::Command, path: &str) -> clap::Command {
    let subs: Vec<String> = c
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subs {
        let sub_path = format!("{path} {name}").trim().to_string();
        c = c.mut_subcommand(&name, |s| add_at(s, &sub_path));
    }
    if let Some((_, lines)) = EXAMPLES.iter().find(|(p, _)| *p == path) {
        let text: Vec<String> = lines.lines().map(|l| format!("  {l}")).collect();
        c = c.after_help(format!("Examples:\n{}", text.join("\n")));
    }
    c
}
