//! The results of `scale`: one row per population size, a markdown table and ratio rows against the smallest size.

use crate::listing::PageStats;
use crate::population::{Populated, Spec};
use crate::timed::{Rate, ratio, show_ratio};

/// Start-up after `--restart-cmd`, seconds from running the command.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Startup {
    /// Until the command returned (it waits for the old process to exit, so this includes the shutdown).
    pub command_s: Option<f64>,
    /// Until `GET /v2/` answered 200.
    pub v2_s: Option<f64>,
    /// Until the first random manifest `GET` succeeded.
    pub manifest_s: Option<f64>,
    /// What went wrong, if the registry did not come back.
    pub error: Option<String>,
}

/// Server memory from `/proc/<pid>/status`, MiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Memory {
    /// VmRSS after the read measurements.
    pub rss_mib: f64,
    /// VmHWM (peak, population included) at that time.
    pub hwm_mib: f64,
}

/// Everything measured at one size.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScaleRow {
    /// The population measured.
    pub spec: Spec,
    /// What populating it took (only what was missing is pushed).
    pub populate: Populated,
    /// Random blob GET.
    pub blob_get: Rate,
    /// Random manifest GET by tag.
    pub manifest_get: Rate,
    /// Random blob HEAD.
    pub head: Rate,
    /// Catalog walks.
    pub catalog: PageStats,
    /// Tag-list walks of random repositories.
    pub tags: PageStats,
    /// Start-up, with `--restart-cmd`.
    pub startup: Option<Startup>,
    /// Server memory, with `--pid` or `--pid-file`.
    pub memory: Option<Memory>,
}

/// The JSON report of `scale`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScaleReport {
    /// Registry URL.
    pub url: String,
    /// Workers of the timed reads.
    pub concurrency: usize,
    /// Seconds per timed read.
    pub duration_s: f64,
    /// Layer blob size, bytes.
    pub blob_size: u64,
    /// Seed of the content and of the random choices.
    pub seed: u64,
    /// Page sizes of the catalog and tag-list walks.
    pub catalog_page: u64,
    /// Page size of the tag-list walks.
    pub tags_page: u64,
    /// One row per size, in the order run.
    pub rows: Vec<ScaleRow>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

/// A table column: a header, how many decimals, and the value(s) it shows for a row.
struct Column {
    header: &'static str,
    decimals: usize,
    values: fn(&ScaleRow) -> Vec<Option<f64>>,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "blobs",
        decimals: 0,
        values: |r| vec![Some(r.spec.blobs as f64)],
    },
    Column {
        header: "repos",
        decimals: 0,
        values: |r| vec![Some(r.spec.repos as f64)],
    },
    Column {
        header: "tags",
        decimals: 0,
        values: |r| vec![Some(r.spec.total_tags() as f64)],
    },
    Column {
        header: "populate s",
        decimals: 1,
        values: |r| vec![Some(r.populate.seconds)],
    },
    Column {
        header: "blob GET req/s",
        decimals: 0,
        values: |r| vec![Some(r.blob_get.per_s)],
    },
    Column {
        header: "manifest GET req/s",
        decimals: 0,
        values: |r| vec![Some(r.manifest_get.per_s)],
    },
    Column {
        header: "HEAD req/s",
        decimals: 0,
        values: |r| vec![Some(r.head.per_s)],
    },
    Column {
        header: "catalog ms/page",
        decimals: 2,
        values: |r| vec![page_ms(&r.catalog)],
    },
    Column {
        header: "tags ms/page",
        decimals: 2,
        values: |r| vec![page_ms(&r.tags)],
    },
    Column {
        header: "restart s (cmd / /v2/ / manifest)",
        decimals: 2,
        values: |r| match &r.startup {
            Some(s) => vec![s.command_s, s.v2_s, s.manifest_s],
            None => vec![None],
        },
    },
    Column {
        header: "RSS MB (now / peak)",
        decimals: 0,
        values: |r| match r.memory {
            Some(m) => vec![Some(m.rss_mib), Some(m.hwm_mib)],
            None => vec![None],
        },
    },
];

/// Mean time per page, when any page was fetched.
fn page_ms(p: &PageStats) -> Option<f64> {
    (p.pages > 0).then_some(p.page.mean_ms)
}

/// One cell: the values joined by ` / `, `-` for a missing one.
fn cell(values: &[Option<f64>], decimals: usize) -> String {
    values
        .iter()
        .map(|v| v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}")))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One ratio cell: each value of `row` over the same value of `base`; none against a base that the
/// table shows as zero (a size that was already populated took "0.0" s, which no ratio means much of).
fn ratio_cell(row: &[Option<f64>], base: &[Option<f64>], decimals: usize) -> String {
    let shown_zero = |b: f64| (b * 10f64.powi(decimals as i32)).round() == 0.0;
    row.iter()
        .enumerate()
        .map(|(i, v)| {
            let b = base.get(i).copied().flatten().filter(|&b| !shown_zero(b));
            show_ratio(v.zip(b).and_then(|(a, b)| ratio(a, b)))
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The markdown table: one row per size, then for every size after the first its ratio to the first.
pub fn markdown(rows: &[ScaleRow]) -> String {
    let mut out = String::new();
    let headers: Vec<&str> = COLUMNS.iter().map(|c| c.header).collect();
    out += &format!("| {} |\n", headers.join(" | "));
    out += &format!("|{}\n", "---:|".repeat(COLUMNS.len()));
    for row in rows {
        let cells: Vec<String> = COLUMNS.iter().map(|c| cell(&(c.values)(row), c.decimals)).collect();
        out += &format!("| {} |\n", cells.join(" | "));
    }
    if let Some(base) = rows.first() {
        for row in &rows[1..] {
            let mut cells: Vec<String> = COLUMNS
                .iter()
                .map(|c| ratio_cell(&(c.values)(row), &(c.values)(base), c.decimals))
                .collect();
            cells[0] = format!("ratio {} / {}: {}", row.spec.label(), base.spec.label(), cells[0]);
            out += &format!("| {} |\n", cells.join(" | "));
        }
    }
    out
}

/// Error lines for the rows' measurements that had failures.
pub fn error_notes(rows: &[ScaleRow]) -> Vec<String> {
    let mut notes = Vec::new();
    for row in rows {
        let label = row.spec.label();
        for (name, rate) in [
            ("blob GET", &row.blob_get),
            ("manifest GET", &row.manifest_get),
            ("HEAD", &row.head),
        ] {
            if rate.errors > 0 {
                notes.push(format!(
                    "{label} {name}: {} error(s), e.g. {}",
                    rate.errors,
                    rate.error_samples.join("; ")
                ));
            }
        }
        for (name, pages) in [("catalog", &row.catalog), ("tags", &row.tags)] {
            if let Some(e) = &pages.error {
                notes.push(format!("{label} {name}: {} failed page(s), e.g. {e}", pages.errors));
            }
        }
        if row.catalog.walks > 0 && row.catalog.entries_first_walk < row.spec.repos {
            notes.push(format!(
                "{label} catalog: a full walk listed {} repositories, fewer than the {} pushed",
                row.catalog.entries_first_walk, row.spec.repos
            ));
        }
        if let Some(e) = row.startup.as_ref().and_then(|s| s.error.as_ref()) {
            notes.push(format!("{label} start-up: {e}"));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(spec: &str, blob_per_s: f64, catalog_ms: f64, startup: Option<(f64, f64)>) -> ScaleRow {
        let rate = |per_s| Rate {
            per_s,
            ..Rate::default()
        };
        let pages = |ms| PageStats {
            pages: 3,
            page: crate::stats::Latency {
                mean_ms: ms,
                ..Default::default()
            },
            ..PageStats::default()
        };
        ScaleRow {
            spec: Spec::parse(spec).unwrap(),
            populate: Populated {
                seconds: 2.0,
                ..Populated::default()
            },
            blob_get: rate(blob_per_s),
            manifest_get: rate(1000.0),
            head: rate(0.0),
            catalog: pages(catalog_ms),
            tags: PageStats::default(),
            startup: startup.map(|(a, b)| Startup {
                command_s: Some(a / 2.0),
                v2_s: Some(a),
                manifest_s: Some(b),
                error: None,
            }),
            memory: Some(Memory {
                rss_mib: 40.0,
                hwm_mib: 80.0,
            }),
        }
    }

    #[test]
    fn table_and_ratio_rows() {
        let rows = [
            row("1000:100:10", 20000.0, 1.5, Some((0.1, 0.2))),
            row("100000:10000:3", 15000.0, 3.0, Some((0.3, 0.3))),
        ];
        let t = markdown(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("| blobs | repos | tags | populate s |"), "{t}");
        assert_eq!(lines[1].matches("---:").count(), COLUMNS.len());
        assert_eq!(
            lines[2],
            "| 1000 | 100 | 1000 | 2.0 | 20000 | 1000 | 0 | 1.50 | - | 0.05 / 0.10 / 0.20 | 40 / 80 |"
        );
        assert_eq!(
            lines[4],
            "| ratio 100000:10000:3 / 1000:100:10: 100.00x | 100.00x | 30.00x | 1.00x | 0.75x | 1.00x | - | 2.00x | - | 3.00x / 3.00x / 1.50x | 1.00x / 1.00x |"
        );
        // Every row has as many cells as the header.
        let cells = |l: &str| l.matches('|').count();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{t}");
    }

    #[test]
    fn no_ratio_against_a_figure_shown_as_zero() {
        let mut base = row("1000:100:10", 100.0, 1.0, None);
        base.populate.seconds = 0.04; // shown as 0.0: already populated
        let mut next = row("10000:1000:3", 100.0, 1.0, None);
        next.populate.seconds = 5.0;
        let t = markdown(&[base.clone(), next.clone()]);
        let ratio_row = t.lines().nth(4).unwrap();
        assert!(ratio_row.contains(": 10.00x | 10.00x | 3.00x | - | 1.00x |"), "{t}");
        base.populate.seconds = 0.05; // shown as 0.1
        let t = markdown(&[base, next]);
        assert!(t.lines().nth(4).unwrap().contains("| 3.00x | 100.00x |"), "{t}");
    }

    #[test]
    fn missing_figures_show_as_dashes() {
        let mut only = row("1000:100:10", 1.0, 1.0, None);
        only.memory = None;
        let t = markdown(&[only]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(2).unwrap().ends_with("| - | - |"), "{t}");
    }

    #[test]
    fn errors_are_noted() {
        let mut r = row("1000:100:10", 1.0, 1.0, None);
        r.head.errors = 2;
        r.head.error_samples = vec!["HEAD /v2/x: 404".into()];
        r.tags.errors = 1;
        r.tags.error = Some("GET /v2/y/tags/list: 500".into());
        let notes = error_notes(std::slice::from_ref(&r));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("HEAD: 2 error(s)"), "{notes:?}");
        assert!(notes[1].contains("tags: 1 failed page(s)"), "{notes:?}");
        // A complete walk that misses repositories is an error too; one that lists them all is not.
        r.catalog.walks = 1;
        r.catalog.entries_first_walk = 99;
        assert!(error_notes(std::slice::from_ref(&r))[2].contains("listed 99 repositories, fewer than the 100"));
        r.catalog.entries_first_walk = 101;
        assert_eq!(error_notes(&[r]).len(), 2);
    }
}
