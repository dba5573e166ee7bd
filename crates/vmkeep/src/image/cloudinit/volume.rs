//! The `cidata` volume: a FAT image labelled CIDATA holding `meta-data`,
//! `user-data` and the guest agent, written with the `fatfs` crate (no host
//! tool), replacing the old one atomically.

use std::io::{self, Seek, Write};
use std::path::Path;

use super::user_data::user_data;
use super::{AGENT_FILE, SeedInputs, VOLUME_LABEL, meta_data};

/// Write the seed volume to `path` (replacing it atomically).
pub fn write_seed(path: &Path, inputs: &SeedInputs<'_>, agent: &[u8]) -> io::Result<()> {
    let (meta, user) = (meta_data(inputs), user_data(inputs));
    let files: [(&str, &[u8]); 3] = [
        ("meta-data", meta.as_bytes()),
        ("user-data", user.as_bytes()),
        (AGENT_FILE, agent),
    ];
    let content: u64 = files.iter().map(|(_, bytes)| bytes.len() as u64).sum();
    // Room for FAT overhead; at least 4 MiB so the filesystem is FAT16.
    let size = (content + content / 4 + (4 << 20)).next_multiple_of(1 << 20);
    let tmp = crate::os::fs::temp_sibling(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.set_len(size)?;
        fatfs::format_volume(
            &mut file,
            fatfs::FormatVolumeOptions::new().volume_label(*VOLUME_LABEL),
        )?;
        file.rewind()?;
        {
            let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
            {
                let root = fs.root_dir();
                for (name, bytes) in files {
                    let mut out = root.create_file(name)?;
                    out.truncate()?;
                    out.write_all(bytes)?;
                    out.flush()?;
                }
            }
            fs.unmount()?;
        }
        crate::os::fs::persist(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
