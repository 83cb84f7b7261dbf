//! User and group names of a container are those of its image: a daemon's account (say
//! `dnsmasq`) exists in the image's /etc/passwd, not necessarily on the host. These read the
//! image's /etc/passwd and /etc/group (the classic colon-separated files; no NSS) in PID 1,
//! before the clone.

use std::path::Path;

/// One /etc/passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The entries of `root/etc/passwd`; an unreadable file has none.
fn accounts(root: &Path) -> Vec<Account> {
    let text = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let [name, _, uid, gid, _, home, ..] = f[..] else { return None };
            Some(Account {
                name: name.to_string(),
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home: home.to_string(),
            })
        })
        .collect()
}

/// (name, gid, members) of each `root/etc/group` entry.
fn groups(root: &Path) -> Vec<(String, u32, Vec<String>)> {
    let text = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let [name, _, gid, members, ..] = f[..] else { return None };
            let members = members.split(',').filter(|m| !m.is_empty()).map(String::from);
            Some((name.to_string(), gid.parse().ok()?, members.collect()))
        })
        .collect()
}

pub fn user_by_name(root: &Path, name: &str) -> Option<Account> {
    accounts(root).into_iter().find(|a| a.name == name)
}

pub fn user_by_uid(root: &Path, uid: u32) -> Option<Account> {
    accounts(root).into_iter().find(|a| a.uid == uid)
}

pub fn group_by_name(root: &Path, name: &str) -> Option<u32> {
    groups(root).into_iter().find(|(n, _, _)| n == name).map(|(_, gid, _)| gid)
}

/// `gid` followed by every group that lists `user` as a member, as initgroups(3) would.
pub fn group_list(root: &Path, user: &str, gid: u32) -> Vec<u32> {
    let mut list = vec![gid];
    for (_, g, members) in groups(root) {
        if !list.contains(&g) && members.iter().any(|m| m == user) {
            list.push(g);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_and_groups_come_from_the_image_files() {
        let root = std::env::temp_dir().join(format!("brig-users-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbroken line\ndnsmasq:x:102:65534::/var/lib/misc:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\nnetdev:x:108:dnsmasq,other\nbad:x:nan:dnsmasq\n",
        )
        .unwrap();
        let a = user_by_name(&root, "dnsmasq").unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (102, 65534, "/var/lib/misc"));
        assert_eq!(user_by_uid(&root, 0).unwrap().name, "root");
        assert_eq!(user_by_name(&root, "broken line"), None);
        assert_eq!(group_by_name(&root, "netdev"), Some(108));
        assert_eq!(group_by_name(&root, "bad"), None);
        assert_eq!(group_list(&root, "dnsmasq", 65534), vec![65534, 108]);
        assert_eq!(group_list(&root, "root", 0), vec![0]);
        assert_eq!(user_by_name(Path::new("/nonexistent-image"), "root"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
