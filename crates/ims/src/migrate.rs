//! `ims migrate import|export DIR`: the original service's JSON data files.
//!
//! Import reads every file it finds (newest file name of each table first, then older names),
//! applies the original's load defaults, and writes everything in one transaction: a malformed file
//! or record stops the import with its name and nothing is changed. Re-importing the same files
//! changes nothing (idempotent). Export writes the same file names back.

use anyhow::{Context, Result, anyhow, bail};
use ims_core::{
    DeletedImage, DeletedPublicKey, DeletedRecipe, Image, Job, PublicKey, Recipe, Record,
    RemoteBuildNode, Table,
};
use ims_store::{Op, Store};
use serde_json::Value;
use std::fmt;
use std::path::Path;

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

/// Parses the records of one file (a JSON array), normalised through the record type.
fn parse_records<T: Record>(file: &str, text: &str) -> Result<Vec<T>> {
    let v: Value = serde_json::from_str(text).with_context(|| format!("{file}: not valid JSON"))?;
    let items = v
        .as_array()
        .ok_or_else(|| anyhow!("{file}: expected a JSON array of records"))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = item
            .get("id")
            .or_else(|| item.get("xname"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        let rec: T = serde_json::from_value(item.clone())
            .map_err(|e| anyhow!("{file}: record #{i} (id {id}): {e}"))?;
        rec.check()
            .map_err(|e| anyhow!("{file}: record #{i} (id {id}): {e}"))?;
        out.push(rec);
    }
    Ok(out)
}

async fn plan_table<T: Record>(
    store: &dyn Store,
    dir: &Path,
    ops: &mut Vec<Op>,
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
    let text =
        std::fs::read_to_string(dir.join(name)).with_context(|| format!("{name}: cannot read"))?;
    let records = parse_records::<T>(name, &text)?;
    let mut seen = std::collections::HashSet::new();
    let mut links = std::collections::HashMap::new();
    for rec in records {
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
        let row = ims_store::row_of(&rec)?;
        match store.get(T::TABLE, rec.id()).await? {
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
    Ok(report)
}

/// Imports every data file found in `dir`. All or nothing.
pub async fn import(store: &dyn Store, dir: &Path) -> Result<Vec<TableReport>> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let mut ops = Vec::new();
    let reports = vec![
        plan_table::<PublicKey>(store, dir, &mut ops).await?,
        plan_table::<Recipe>(store, dir, &mut ops).await?,
        plan_table::<Image>(store, dir, &mut ops).await?,
        plan_table::<Job>(store, dir, &mut ops).await?,
        plan_table::<RemoteBuildNode>(store, dir, &mut ops).await?,
        plan_table::<DeletedPublicKey>(store, dir, &mut ops).await?,
        plan_table::<DeletedRecipe>(store, dir, &mut ops).await?,
        plan_table::<DeletedImage>(store, dir, &mut ops).await?,
    ];
    if reports.iter().all(|r| r.file.is_none()) {
        bail!("{}: no IMS data files found", dir.display());
    }
    if !ops.is_empty() {
        store
            .apply(ops)
            .await
            .context("writing the imported records")?;
    }
    Ok(reports)
}

/// Writes every table to `dir` under the original's file names. Returns (file, records) pairs.
pub async fn export(store: &dyn Store, dir: &Path) -> Result<Vec<(String, usize)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut out = Vec::new();
    for table in Table::ALL {
        let rows = store.list(table).await?;
        let body = ims_store::join_json(&rows);
        let name = table.original_file();
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body.as_bytes()).with_context(|| format!("{name}: cannot write"))?;
        std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("{name}: cannot write"))?;
        out.push((name.to_string(), rows.len()));
    }
    Ok(out)
}
