//! The durable spool: every signed report is written here (and fsynced) before it is sent, and stays
//! until a collector acknowledges it.
//!
//! Layout: `<state-dir>/spool/seg-<first seq>.log`, append-only segments of records
//! `[len u32 LE][crc32 u32 LE][seq u64 LE][SignedReport bytes]`, the CRC over seq and payload. On open,
//! a torn record at the end of the newest segment (a crash mid-write) is cut off; a damaged record
//! elsewhere ends that segment's replay and is reported. When the spool would exceed its size bound,
//! the oldest segment is dropped and the caller is told which sequence numbers were lost, so that it
//! can sign a gap record: loss is never silent.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::identity::{Result, StateError, ensure_dir, io_err};

const HEADER: usize = 16;
/// Segments are rotated at this size, or at a quarter of the spool bound if that is smaller (so a small
/// bound still drops old reports a segment at a time rather than never).
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// A report waiting for acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its sequence number.
    pub seq: u64,
    /// The encoded `SignedReport`.
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    last: u64,
    bytes: u64,
}

/// What opening the spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from the end of the newest segment (torn write).
    pub truncated_bytes: u64,
    /// Records that failed their checksum and were skipped.
    pub damaged_records: usize,
    /// Segments in which damage was found.
    pub corrupt_segments: Vec<String>,
}

/// The spool.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    segments: Vec<Segment>,
    pending: VecDeque<Pending>,
    max_bytes: u64,
    segment_bytes: u64,
    current: Option<File>,
}

fn record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// What one segment holds.
struct SegmentScan {
    records: Vec<Pending>,
    /// Records whose checksum failed but whose framing was intact: skipped, the rest still read.
    damaged: usize,
    /// Offset where framing broke (a torn or garbage tail), if it did.
    bad_tail_at: Option<u64>,
    len: u64,
}

/// Reads the records of one segment, bounded by `MAX_MESSAGE_BYTES` per record.
fn read_segment(path: &Path) -> Result<SegmentScan> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let mut scan = SegmentScan { records: Vec::new(), damaged: 0, bad_tail_at: None, len };
    let mut off = 0u64;
    let mut header = [0u8; HEADER];
    while off < len {
        if len - off < HEADER as u64 || f.read_exact(&mut header).is_err() {
            scan.bad_tail_at = Some(off);
            break;
        }
        let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[8..16]);
        let seq = u64::from_le_bytes(seq_bytes);
        let mut payload = Vec::new();
        if n > gpuattest_proto::MAX_MESSAGE_BYTES as u64
            || off + HEADER as u64 + n > len
            || (&mut f).take(n).read_to_end(&mut payload).is_err()
            || payload.len() as u64 != n
        {
            scan.bad_tail_at = Some(off);
            break;
        }
        off += HEADER as u64 + n;
        let mut h = crc32fast::Hasher::new();
        h.update(&seq_bytes);
        h.update(&payload);
        if h.finalize() != crc || scan.records.last().is_some_and(|p| p.seq >= seq) {
            scan.damaged += 1;
            continue;
        }
        scan.records.push(Pending { seq, bytes: payload });
    }
    Ok(scan)
}

impl Spool {
    /// Opens (or creates) the spool in `<state_dir>/spool`, keeping reports after `acked_seq`.
    ///
    /// # Errors
    /// [`crate::identity::StateError::Io`] when the directory or a segment cannot be read or repaired.
    pub fn open(state_dir: &Path, acked_seq: u64, max_bytes: u64) -> Result<(Spool, Recovery)> {
        let dir = state_dir.join("spool");
        ensure_dir(&dir)?;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let first = name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok()?;
                Some((first, e.path()))
            })
            .collect();
        names.sort();
        let segment_bytes = (max_bytes / 4).clamp(16 * 1024, SEGMENT_BYTES);
        let mut spool =
            Spool { dir, segments: Vec::new(), pending: VecDeque::new(), max_bytes, segment_bytes, current: None };
        let mut recovery = Recovery::default();
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let SegmentScan { records, damaged, bad_tail_at, len } = read_segment(&path)?;
            let mut bytes = len;
            if damaged > 0 {
                recovery.damaged_records += damaged;
                recovery.corrupt_segments.push(path.display().to_string());
                warn!(segment = %path.display(), damaged, "spool: records failed their checksum and were skipped");
            }
            if let Some(off) = bad_tail_at {
                if i + 1 == count {
                    // Torn write at the tail of the newest segment: cut it so appends continue cleanly.
                    let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                    f.set_len(off).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    recovery.truncated_bytes += len - off;
                    bytes = off;
                    warn!(segment = %path.display(), cut = len - off, "spool: cut a torn record left by a crash");
                } else {
                    recovery.corrupt_segments.push(path.display().to_string());
                    warn!(segment = %path.display(), offset = off, "spool: broken framing; the rest of this segment is lost");
                }
            }
            let last = records.last().map_or(first.saturating_sub(1), |r| r.seq);
            if records.is_empty() && i + 1 != count {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            for r in records {
                if r.seq > acked_seq && spool.pending.back().is_none_or(|p| p.seq < r.seq) {
                    spool.pending.push_back(r);
                }
            }
            spool.segments.push(Segment { path, last, bytes });
        }
        spool.ack(acked_seq)?;
        if !spool.pending.is_empty() {
            info!(reports = spool.pending.len(), "spool: reports waiting for acknowledgement");
        }
        Ok((spool, recovery))
    }

    /// Counts what a spool holds without repairing or changing it (for `status`, while the daemon
    /// runs): reports after `acked_seq`, bytes on disk, and the highest sequence number.
    ///
    /// # Errors
    /// [`crate::identity::StateError::Io`] when a segment cannot be read.
    pub fn inspect(state_dir: &Path, acked_seq: u64) -> Result<(u64, u64, u64)> {
        let dir = state_dir.join("spool");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok((0, 0, 0));
        };
        let (mut count, mut bytes, mut last) = (0u64, 0u64, 0u64);
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("seg-") && name.ends_with(".log")) {
                continue;
            }
            // The running daemon may delete an acknowledged segment between listing and reading.
            let scan = match read_segment(&e.path()) {
                Ok(s) => s,
                Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            bytes += scan.len;
            for r in scan.records {
                last = last.max(r.seq);
                if r.seq > acked_seq {
                    count += 1;
                }
            }
        }
        Ok((count, bytes, last))
    }

    /// Reports not yet acknowledged, oldest first.
    pub fn pending(&self) -> &VecDeque<Pending> {
        &self.pending
    }

    /// The highest sequence number in the spool.
    pub fn last_seq(&self) -> Option<u64> {
        self.pending.back().map(|p| p.seq)
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends one report and fsyncs it. Returns the range of sequence numbers dropped to stay within
    /// the size bound, if any.
    ///
    /// # Errors
    /// [`crate::identity::StateError::Io`] when the write or fsync fails; the report is then not spooled.
    pub fn append(&mut self, seq: u64, bytes: Vec<u8>) -> Result<Option<(u64, u64)>> {
        let rec = record(seq, &bytes);
        let rotate =
            self.segments.last().is_none_or(|s| s.bytes > 0 && s.bytes + rec.len() as u64 > self.segment_bytes);
        if rotate || self.current.is_none() {
            if rotate {
                let path = self.dir.join(format!("seg-{seq:020}.log"));
                self.segments.push(Segment { path, last: seq.saturating_sub(1), bytes: 0 });
            }
            let Some(seg) = self.segments.last() else { unreachable!("a segment was just pushed") };
            let mut f =
                OpenOptions::new().create(true).append(true).mode(0o600).open(&seg.path).map_err(io_err(&seg.path))?;
            f.seek(SeekFrom::End(0)).map_err(io_err(&seg.path))?;
            if let Some(dir) = seg.path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
            }
            self.current = Some(f);
        }
        let (Some(f), Some(seg)) = (self.current.as_mut(), self.segments.last_mut()) else {
            unreachable!("current segment is open")
        };
        f.write_all(&rec).map_err(io_err(&seg.path))?;
        f.sync_data().map_err(io_err(&seg.path))?;
        seg.bytes += rec.len() as u64;
        seg.last = seq;
        self.pending.push_back(Pending { seq, bytes });
        self.enforce_bound()
    }

    /// Drops whole oldest segments while over the bound (never the one being written).
    fn enforce_bound(&mut self) -> Result<Option<(u64, u64)>> {
        let mut dropped: Option<(u64, u64)> = None;
        while self.disk_bytes() > self.max_bytes && self.segments.len() > 1 {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            let lost: Vec<u64> = self.pending.iter().take_while(|p| p.seq <= seg.last).map(|p| p.seq).collect();
            self.pending.retain(|p| p.seq > seg.last);
            if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
                dropped = Some((dropped.map_or(*first, |d| d.0), *last));
                warn!(first, last, "spool full: dropped unacknowledged reports; a signed gap record follows");
            }
        }
        Ok(dropped)
    }

    /// Forgets everything up to and including `seq`, deleting segments that hold nothing newer.
    ///
    /// # Errors
    /// [`crate::identity::StateError::Io`] when a segment cannot be removed.
    pub fn ack(&mut self, seq: u64) -> Result<()> {
        while self.pending.front().is_some_and(|p| p.seq <= seq) {
            self.pending.pop_front();
        }
        while self.segments.len() > 1 && self.segments[0].last <= seq {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
        Ok(())
    }

    /// Sequence numbers in `(after, last spooled]` that are not in the spool: reports lost to damage.
    pub fn holes(&self, after: u64) -> Vec<(u64, u64)> {
        let mut holes = Vec::new();
        let mut expect = after + 1;
        for p in &self.pending {
            if p.seq > expect {
                holes.push((expect, p.seq - 1));
            }
            expect = expect.max(p.seq + 1);
        }
        holes
    }

    /// Removes one report (the collector rejected it; resending the same bytes cannot succeed).
    pub fn discard(&mut self, seq: u64) {
        self.pending.retain(|p| p.seq != seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_ack() {
        let t = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(t.path(), 0, 1 << 30).expect("open");
        for seq in 1..=5 {
            s.append(seq, vec![seq as u8; 100]).expect("append");
        }
        s.ack(2).expect("ack");
        drop(s);
        let (s, rec) = Spool::open(t.path(), 2, 1 << 30).expect("reopen");
        assert_eq!(rec, Recovery::default());
        assert_eq!(s.pending().iter().map(|p| p.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(s.pending()[0].bytes, vec![3u8; 100]);
    }

    #[test]
    fn finding_11_spool_segments_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(t.path(), 0, 1 << 30).expect("open");
        s.append(1, vec![7; 10]).expect("append");
        let dir = t.path().join("spool");
        assert_eq!(fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
        for e in fs::read_dir(&dir).expect("list").flatten() {
            assert_eq!(e.metadata().expect("meta").permissions().mode() & 0o777, 0o600, "{:?}", e.path());
        }
    }

    #[test]
    fn holes_are_found() {
        let t = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(t.path(), 0, 1 << 30).expect("open");
        for seq in [3, 4, 7, 9] {
            s.append(seq, vec![1]).expect("append");
        }
        assert_eq!(s.holes(0), vec![(1, 2), (5, 6), (8, 8)]);
        assert_eq!(s.holes(4), vec![(5, 6), (8, 8)]);
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let t = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(t.path(), 0, 1 << 30).expect("open");
        s.append(1, vec![1; 50]).expect("append");
        s.append(2, vec![2; 50]).expect("append");
        drop(s);
        let seg = t.path().join("spool").join(format!("seg-{:020}.log", 1));
        let len = fs::metadata(&seg).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&seg).expect("open");
        f.set_len(len - 7).expect("truncate");
        let (mut s, rec) = Spool::open(t.path(), 0, 1 << 30).expect("reopen");
        assert_eq!(rec.truncated_bytes, (HEADER + 50 - 7) as u64);
        assert_eq!(s.last_seq(), Some(1));
        s.append(2, vec![9; 10]).expect("append after cut");
        drop(s);
        let (s, rec) = Spool::open(t.path(), 0, 1 << 30).expect("reopen");
        assert_eq!(rec, Recovery::default());
        assert_eq!(s.pending().iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn flipped_byte_is_detected() {
        let t = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(t.path(), 0, 1 << 30).expect("open");
        for seq in 1..=3 {
            s.append(seq, vec![seq as u8; 30]).expect("append");
        }
        drop(s);
        let seg = t.path().join("spool").join(format!("seg-{:020}.log", 1));
        let mut bytes = fs::read(&seg).expect("read");
        bytes[HEADER + 30 + HEADER + 5] ^= 0xff;
        fs::write(&seg, bytes).expect("write");
        let (s, rec) = Spool::open(t.path(), 0, 1 << 30).expect("reopen");
        assert_eq!(rec.damaged_records, 1);
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(s.pending().iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn hostile_length_is_bounded() {
        let t = tempfile::tempdir().expect("tmp");
        let dir = t.path().join("spool");
        fs::create_dir_all(&dir).expect("mkdir");
        let mut junk = vec![0xffu8; HEADER];
        junk.extend_from_slice(b"tail");
        fs::write(dir.join(format!("seg-{:020}.log", 1)), junk).expect("write");
        let (s, rec) = Spool::open(t.path(), 0, 1 << 30).expect("open");
        assert!(s.pending().is_empty());
        assert_eq!(rec.truncated_bytes, (HEADER + 4) as u64);
    }

    #[test]
    fn overflow_drops_oldest_and_says_so() {
        let t = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(t.path(), 0, 6 * 1024 * 1024).expect("open");
        let big = vec![7u8; 1024 * 1024];
        let mut drops = Vec::new();
        for seq in 1..=12 {
            if let Some(d) = s.append(seq, big.clone()).expect("append") {
                drops.push(d);
            }
        }
        // Every dropped report is accounted for, in order, with no overlap and no hole.
        assert_eq!(drops.first().map(|d| d.0), Some(1));
        for w in drops.windows(2) {
            assert_eq!(w[1].0, w[0].1 + 1);
        }
        let last = drops.last().expect("something was dropped").1;
        assert_eq!(s.pending().front().map(|p| p.seq), Some(last + 1));
        assert!(s.disk_bytes() <= 6 * 1024 * 1024);
    }
}
