//! `ims migrate import|export DIR`: the original service's JSON data files.
//!
//! Import reads every file it finds (newest file name of each table first, then older names),
//! applies the original's load defaults, and writes everything in one transaction: a malformed file
//! or record stops the import with its name and nothing is changed. Files are read record by record
//! and written in groups inside that transaction, so memory does not grow with their size. Re-importing the same files
//! changes nothing (idempotent). Export writes the same file names back.

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use ims_core::{
    DeletedImage, DeletedPublicKey, DeletedRecipe, Image, Job, PublicKey, Recipe, Record,
    RemoteBuildNode, Table,
};
use ims_store::{Batch, Op, Store};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt as _;

/// What import did to one table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TableReport {
    pub table: &'static str,
    pub file: Option<String>,
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
}

impl fmt::Display for TableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            None => write!(f, "{:<20} no data file", self.table),
            Some(file) => write!(
                f,
                "{:<20} {file}: {} added, {} updated, {} unchanged",
                self.table, self.added, self.updated, self.unchanged
            ),
        }
    }
}

/// Records handed from the file reader to the writer at a time.
const GROUP: usize = 1000;
/// Stored records read at the same time to compare them with the imported ones.
const READ_AHEAD: usize = 8;

/// Calls `each` with every element of a JSON array, parsed one at a time.
struct EachElement<F>(F);

impl<'de, F: FnMut(Value) -> Result<(), ()>> serde::de::Visitor<'de> for EachElement<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<Value>()? {
            (self.0)(item).map_err(|()| serde::de::Error::custom("stopped"))?;
        }
        Ok(())
    }
}

/// Reads one data file (a JSON array) in a thread of its own, record by record, normalised
/// through the record type and checked, and hands the records over in groups: the file is never
/// held in memory as a whole.
fn read_records<T: Record>(
    file: &'static str,
    path: PathBuf,
) -> tokio::sync::mpsc::Receiver<Result<Vec<T>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut group = Vec::with_capacity(GROUP);
        let mut failure = None;
        let mut i = 0usize;
        let read = (|| -> Result<()> {
            let f = std::fs::File::open(&path).with_context(|| format!("{file}: cannot read"))?;
            let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
                1 << 16,
                f,
            ));
            let each = EachElement(|item: Value| {
                let parsed = parse_record::<T>(file, i, item);
                i += 1;
                match parsed {
                    Ok(rec) => group.push(rec),
                    Err(e) => {
                        failure = Some(e);
                        return Err(());
                    }
                }
                if group.len() >= GROUP {
                    let full = std::mem::replace(&mut group, Vec::with_capacity(GROUP));
                    // The writer stopped (it failed): stop reading too.
                    tx.blocking_send(Ok(full)).map_err(|_| ())?;
                }
                Ok(())
            });
            let parsed =
                serde::Deserializer::deserialize_seq(&mut de, each).and_then(|()| de.end());
            match parsed {
                Ok(()) => Ok(()),
                Err(_) if failure.is_some() => {
                    Err(failure.take().unwrap_or_else(|| anyhow!("{file}: stopped")))
                }
                Err(e) if e.classify() == serde_json::error::Category::Data && i == 0 => {
                    Err(anyhow!("{file}: expected a JSON array of records"))
                }
                Err(e) => Err(anyhow!(e).context(format!("{file}: not valid JSON"))),
            }
        })();
        let last = match read {
            Ok(()) => Ok(group),
            Err(e) => Err(e),
        };
        let _ = tx.blocking_send(last);
    });
    rx
}

/// One element of a data file as a record.
fn parse_record<T: Record>(file: &str, i: usize, item: Value) -> Result<T> {
    let id = item
        .get("id")
        .or_else(|| item.get("xname"))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let rec: T =
        serde_json::from_value(item).map_err(|e| anyhow!("{file}: record #{i} (id {id}): {e}"))?;
    rec.check()
        .map_err(|e| anyhow!("{file}: record #{i} (id {id}): {e}"))?;
    Ok(rec)
}

async fn import_table<T: Record>(
    store: &dyn Store,
    dir: &Path,
    batch: &mut dyn Batch,
) -> Result<TableReport> {
    let mut report = TableReport {
        table: T::TABLE.name(),
        ..Default::default()
    };
    let names =
        std::iter::once(T::TABLE.original_file()).chain(T::TABLE.legacy_files().iter().copied());
    let Some(name) = names.into_iter().find(|n| dir.join(n).is_file()) else {
        return Ok(report);
    };
    report.file = Some(name.to_string());
    // Into an empty table (a first import) every record is new: no need to compare.
    let was_empty = store.stream(T::TABLE).next().await.transpose()?.is_none();
    let mut records = read_records::<T>(name, dir.join(name));
    let mut seen = std::collections::HashSet::new();
    let mut links = std::collections::HashMap::new();
    while let Some(group) = records.recv().await {
        let group = group?;
        for rec in &group {
            if !seen.insert(rec.id().to_string()) {
                bail!("{name}: record id {} appears twice", rec.id());
            }
            // An artifact link belongs to one active record (the store enforces it).
            if let Some(path) = rec.link_path()
                && let Some(other) = links.insert(path.to_string(), rec.id().to_string())
            {
                bail!(
                    "{name}: records {other} and {} share the link {path}",
                    rec.id()
                );
            }
        }
        // What is stored already, read a few records at a time (the transaction has its own
        // connection; these reads see the database as it was before it).
        let compared: Vec<_> = futures::stream::iter(group.iter().map(|rec| async move {
            let row = ims_store::row_of(rec)?;
            let existing = if was_empty {
                None
            } else {
                store.get(T::TABLE, rec.id()).await?
            };
            anyhow::Ok((row, existing))
        }))
        .buffered(READ_AHEAD)
        .try_collect()
        .await?;
        let mut ops = Vec::new();
        for (row, existing) in compared {
            match existing {
                Some(existing) if existing.data == row.data => report.unchanged += 1,
                Some(_) => {
                    report.updated += 1;
                    ops.push(Op::Upsert(T::TABLE, row));
                }
                None => {
                    report.added += 1;
                    ops.push(Op::Upsert(T::TABLE, row));
                }
            }
        }
        if !ops.is_empty() {
            batch
                .apply(ops)
                .await
                .context("writing the imported records")?;
        }
    }
    Ok(report)
}

/// Imports every data file found in `dir`. All or nothing: one transaction, filled as the files
/// are read (memory does not grow with the number of records).
pub async fn import(store: &dyn Store, dir: &Path) -> Result<Vec<TableReport>> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let mut batch = store.begin().await?;
    let b = &mut *batch;
    let reports = vec![
        import_table::<PublicKey>(store, dir, b).await?,
        import_table::<Recipe>(store, dir, b).await?,
        import_table::<Image>(store, dir, b).await?,
        import_table::<Job>(store, dir, b).await?,
        import_table::<RemoteBuildNode>(store, dir, b).await?,
        import_table::<DeletedPublicKey>(store, dir, b).await?,
        import_table::<DeletedRecipe>(store, dir, b).await?,
        import_table::<DeletedImage>(store, dir, b).await?,
    ];
    if reports.iter().all(|r| r.file.is_none()) {
        bail!("{}: no IMS data files found", dir.display());
    }
    batch
        .commit()
        .await
        .context("writing the imported records")?;
    Ok(reports)
}

/// Writes every table to `dir` under the original's file names. Returns (file, records) pairs.
pub async fn export(store: &dyn Store, dir: &Path) -> Result<Vec<(String, usize)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut out = Vec::new();
    for table in Table::ALL {
        let name = table.original_file();
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = tokio::io::BufWriter::new(
            tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("{name}: cannot write"))?,
        );
        // Streamed: the table is never held in memory as a whole.
        let mut rows = 0usize;
        let mut chunks =
            ims_store::json_chunks(store.stream(table).inspect_ok(|_| rows += 1).boxed());
        while let Some(chunk) = chunks.try_next().await? {
            f.write_all(&chunk)
                .await
                .with_context(|| format!("{name}: cannot write"))?;
        }
        drop(chunks);
        f.flush()
            .await
            .with_context(|| format!("{name}: cannot write"))?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("{name}: cannot write"))?;
        out.push((name.to_string(), rows));
    }
    Ok(out)
}
