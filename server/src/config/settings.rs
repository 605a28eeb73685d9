//! The table of every setting: its path in `config.yml`, its variables, default and doc.

/// One documented setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Dotted path in `config.yml` (`-` for a setting that exists only as a variable).
    pub path: &'static str,
    /// Environment variables that set it (first is the canonical one).
    pub env: &'static [&'static str],
    /// Default, as shown to users.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every setting Berth reads. `docs/configuration.md` documents exactly these.
pub const SETTINGS: &[Setting] = &[
    Setting {
        path: "version",
        env: &[],
        default: "0.1",
        doc: "Configuration format version (accepted for compatibility).",
    },
    Setting {
        path: "log.level",
        env: &["REGISTRY_LOG_LEVEL"],
        default: "info",
        doc: "error, warn, info, debug or trace.",
    },
    Setting {
        path: "log.formatter",
        env: &["REGISTRY_LOG_FORMATTER"],
        default: "text",
        doc: "text or json.",
    },
    Setting {
        path: "log.accesslog.disabled",
        env: &["REGISTRY_LOG_ACCESSLOG_DISABLED"],
        default: "false",
        doc: "Turn off the one-line-per-request log.",
    },
    Setting {
        path: "http.addr",
        env: &["REGISTRY_HTTP_ADDR"],
        default: "0.0.0.0:5000",
        doc: "Listen address, host:port (`:5000` means all interfaces).",
    },
    Setting {
        path: "-",
        env: &["REGISTRY_HOST"],
        default: "(from http.addr)",
        doc: "Listen host only; overrides the host part of http.addr.",
    },
    Setting {
        path: "-",
        env: &["REGISTRY_PORT"],
        default: "(from http.addr)",
        doc: "Listen port only; overrides the port part of http.addr. A Kubernetes service link value such as tcp://10.0.0.7:5000 is ignored with a warning.",
    },
    Setting {
        path: "http.secret",
        env: &["REGISTRY_HTTP_SECRET"],
        default: "(none)",
        doc: "Accepted for compatibility; Berth's upload URLs need no signing secret.",
    },
    Setting {
        path: "storage.filesystem.rootdirectory",
        env: &["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "REGISTRY_STORAGE_PATH"],
        default: "./data",
        doc: "Directory for blobs, upload sessions and metadata.",
    },
    Setting {
        path: "-",
        env: &["REGISTRY_STORAGE"],
        default: "(from the sections: s3 when storage.s3 is set, else filesystem)",
        doc: "The storage driver, filesystem or s3, as distribution's variable; with s3 the section may come from REGISTRY_STORAGE_S3_* variables alone. A driver and the other driver's section together stop start-up.",
    },
    Setting {
        path: "storage.s3.accesskey",
        env: &["REGISTRY_STORAGE_S3_ACCESSKEY"],
        default: "(AWS_ACCESS_KEY_ID)",
        doc: "Access key id. With secretkey; when neither is set, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN are used.",
    },
    Setting {
        path: "storage.s3.secretkey",
        env: &["REGISTRY_STORAGE_S3_SECRETKEY"],
        default: "(AWS_SECRET_ACCESS_KEY)",
        doc: "Secret access key. Never logged or shown in errors; prefer the variable.",
    },
    Setting {
        path: "storage.s3.region",
        env: &["REGISTRY_STORAGE_S3_REGION"],
        default: "(AWS_REGION, then AWS_DEFAULT_REGION)",
        doc: "Region the requests are signed for (required; S3-compatible stores usually accept us-east-1).",
    },
    Setting {
        path: "storage.s3.regionendpoint",
        env: &["REGISTRY_STORAGE_S3_REGIONENDPOINT"],
        default: "(AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, then https://s3.<region>.amazonaws.com)",
        doc: "URL of an S3-compatible store (MinIO, SeaweedFS, Ceph…), e.g. http://minio:9000; without a scheme, https:// or http:// as secure says.",
    },
    Setting {
        path: "storage.s3.bucket",
        env: &["REGISTRY_STORAGE_S3_BUCKET"],
        default: "(required)",
        doc: "Bucket the blobs are kept in; it must exist.",
    },
    Setting {
        path: "storage.s3.rootdirectory",
        env: &["REGISTRY_STORAGE_S3_ROOTDIRECTORY"],
        default: "(the bucket's root)",
        doc: "Prefix of every key Berth writes, e.g. /registry; leading and trailing / are dropped, empty, . and .. segments refused.",
    },
    Setting {
        path: "storage.s3.forcepathstyle",
        env: &["REGISTRY_STORAGE_S3_FORCEPATHSTYLE"],
        default: "false",
        doc: "Path-style URLs (endpoint/bucket/key) instead of virtual-hosted ones (bucket.endpoint/key); MinIO and SeaweedFS need true.",
    },
    Setting {
        path: "storage.s3.secure",
        env: &["REGISTRY_STORAGE_S3_SECURE"],
        default: "true",
        doc: "HTTPS to the store; false: plain HTTP. A scheme in regionendpoint wins.",
    },
    Setting {
        path: "storage.s3.skipverify",
        env: &["REGISTRY_STORAGE_S3_SKIPVERIFY"],
        default: "false",
        doc: "Do not verify the store's TLS certificate (warned about at start-up).",
    },
    Setting {
        path: "storage.s3.chunksize",
        env: &["REGISTRY_STORAGE_S3_CHUNKSIZE"],
        default: "10485760",
        doc: "Size in bytes of each multipart part but the last, from 5242880 to 5368709120; a number, no units.",
    },
    Setting {
        path: "storage.s3.uploadmemory",
        env: &["REGISTRY_STORAGE_S3_UPLOADMEMORY"],
        default: "50331648 (48 MiB), or 2 × chunksize when that is more",
        doc: "Most bytes the part buffers of all uploads of one process hold at once (at least two parts); uploads beyond it wait for room.",
    },
    Setting {
        path: "storage.s3.storageclass",
        env: &["REGISTRY_STORAGE_S3_STORAGECLASS"],
        default: "STANDARD",
        doc: "Storage class of new objects; STANDARD (or NONE) sends none, so the bucket's default applies.",
    },
    Setting {
        path: "storage.s3.v4auth",
        env: &["REGISTRY_STORAGE_S3_V4AUTH"],
        default: "true",
        doc: "Only true: Berth signs every request with AWS Signature Version 4; false stops start-up.",
    },
    Setting {
        path: "storage.s3.encrypt",
        env: &["REGISTRY_STORAGE_S3_ENCRYPT"],
        default: "false",
        doc: "Only false in this version: server-side encryption requested by Berth is not available, true stops start-up (the bucket's default encryption still applies).",
    },
    Setting {
        path: "storage.s3.keyid",
        env: &["REGISTRY_STORAGE_S3_KEYID"],
        default: "(none)",
        doc: "KMS key of encrypt; not used (warned about).",
    },
    Setting {
        path: "storage.s3.useragent",
        env: &["REGISTRY_STORAGE_S3_USERAGENT"],
        default: "(none)",
        doc: "Not used (warned about): Berth sends its own User-Agent.",
    },
    Setting {
        path: "storage.s3.usedualstack",
        env: &["REGISTRY_STORAGE_S3_USEDUALSTACK"],
        default: "false",
        doc: "Not used (warned about): name the dual-stack endpoint in regionendpoint instead.",
    },
    Setting {
        path: "storage.s3.accelerate",
        env: &["REGISTRY_STORAGE_S3_ACCELERATE"],
        default: "false",
        doc: "Not used (warned about): S3 Transfer Acceleration is not used.",
    },
    Setting {
        path: "storage.s3.objectacl",
        env: &["REGISTRY_STORAGE_S3_OBJECTACL"],
        default: "(none)",
        doc: "Not used (warned about): objects are written without a canned ACL.",
    },
    Setting {
        path: "storage.s3.multipartcopychunksize",
        env: &["REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE"],
        default: "(none)",
        doc: "Not used (warned about): Berth never copies objects inside the bucket.",
    },
    Setting {
        path: "storage.s3.multipartcopymaxconcurrency",
        env: &["REGISTRY_STORAGE_S3_MULTIPARTCOPYMAXCONCURRENCY"],
        default: "(none)",
        doc: "Not used (warned about): Berth never copies objects inside the bucket.",
    },
    Setting {
        path: "storage.s3.multipartcopythresholdsize",
        env: &["REGISTRY_STORAGE_S3_MULTIPARTCOPYTHRESHOLDSIZE"],
        default: "(none)",
        doc: "Not used (warned about): Berth never copies objects inside the bucket.",
    },
    Setting {
        path: "storage.s3.loglevel",
        env: &["REGISTRY_STORAGE_S3_LOGLEVEL"],
        default: "(none)",
        doc: "Not used (warned about): log.level applies.",
    },
    Setting {
        path: "storage.s3.maxrequestspersecond",
        env: &["REGISTRY_STORAGE_S3_MAXREQUESTSPERSECOND"],
        default: "(none)",
        doc: "Not used (warned about): Berth does not pace its requests to S3.",
    },
    Setting {
        path: "storage.s3.checksumdisabled",
        env: &["REGISTRY_STORAGE_S3_CHECKSUMDISABLED"],
        default: "(none)",
        doc: "Not used (warned about): Berth checks every blob against its digest itself.",
    },
    Setting {
        path: "storage.s3.checksumalgorithm",
        env: &["REGISTRY_STORAGE_S3_CHECKSUMALGORITHM"],
        default: "(none)",
        doc: "Not used (warned about): Berth checks every blob against its digest itself.",
    },
    Setting {
        path: "storage.s3.presignexpiry",
        env: &["REGISTRY_STORAGE_S3_PRESIGNEXPIRY"],
        default: "20m",
        doc: "Berth's own: how long the presigned URL of a redirected blob GET stays valid (at most 168h).",
    },
    Setting {
        path: "storage.s3.connecttimeout",
        env: &["REGISTRY_STORAGE_S3_CONNECTTIMEOUT"],
        default: "5s",
        doc: "Berth's own: how long one connection attempt to the store may take.",
    },
    Setting {
        path: "storage.redirect.disable",
        env: &["REGISTRY_STORAGE_REDIRECT_DISABLE"],
        default: "false",
        doc: "With storage.s3: true serves blob GETs through Berth instead of answering 307 to a presigned URL of the store. Not used with the filesystem driver.",
    },
    Setting {
        path: "database.enabled",
        env: &["REGISTRY_DATABASE_ENABLED"],
        default: "false",
        doc: "Keep the metadata (links, manifests, tags, referrers) in a shared PostgreSQL database instead of SQLite under the storage root, so that several Berth processes share it (docs/scale-out.md). The schema is created and migrated at start-up, one process at a time.",
    },
    Setting {
        path: "database.host",
        env: &["REGISTRY_DATABASE_HOST"],
        default: "localhost",
        doc: "PostgreSQL host name or address, or the directory of its Unix socket (starting with /).",
    },
    Setting {
        path: "database.port",
        env: &["REGISTRY_DATABASE_PORT"],
        default: "5432",
        doc: "PostgreSQL port.",
    },
    Setting {
        path: "database.user",
        env: &["REGISTRY_DATABASE_USER"],
        default: "registry",
        doc: "Role to log in as.",
    },
    Setting {
        path: "database.password",
        env: &["REGISTRY_DATABASE_PASSWORD"],
        default: "(empty)",
        doc: "Its password. Never logged; prefer the variable or a file readable by Berth only.",
    },
    Setting {
        path: "database.dbname",
        env: &["REGISTRY_DATABASE_DBNAME"],
        default: "registry",
        doc: "Database name; it must exist (Berth creates the tables, not the database).",
    },
    Setting {
        path: "database.sslmode",
        env: &["REGISTRY_DATABASE_SSLMODE"],
        default: "disable",
        doc: "TLS to PostgreSQL, libpq's modes: disable (no TLS); allow and prefer (TLS when the server offers it, else plain; allow behaves as prefer, trying TLS first); require (TLS always, the certificate not checked unless sslrootcert is set); verify-ca (TLS, the certificate's chain verified against sslrootcert, or the system's roots without it); verify-full (verify-ca, and the certificate must name database.host). Ignored over a Unix socket, which has no TLS.",
    },
    Setting {
        path: "database.sslrootcert",
        env: &["REGISTRY_DATABASE_SSLROOTCERT"],
        default: "(none)",
        doc: "PEM file of the CA certificate(s) the server's certificate must chain to. Read at start-up. Used by verify-ca and verify-full (without it: the system's roots), and, when set, by require, prefer and allow too (as libpq does with a root file).",
    },
    Setting {
        path: "database.sslcert",
        env: &["REGISTRY_DATABASE_SSLCERT"],
        default: "(none)",
        doc: "PEM client certificate (chain, leaf first) for servers that ask for one (clientcert=verify-ca or verify-full, or cert authentication, in pg_hba.conf). Needs database.sslkey. Read at start-up.",
    },
    Setting {
        path: "database.sslkey",
        env: &["REGISTRY_DATABASE_SSLKEY"],
        default: "(none)",
        doc: "Unencrypted PEM private key of database.sslcert (PKCS#8, PKCS#1 or SEC1). Read at start-up; never logged.",
    },
    Setting {
        path: "database.connecttimeout",
        env: &["REGISTRY_DATABASE_CONNECTTIMEOUT"],
        default: "5s",
        doc: "How long one connection attempt may take.",
    },
    Setting {
        path: "database.pool.maxopen",
        env: &["REGISTRY_DATABASE_POOL_MAXOPEN"],
        default: "20",
        doc: "Most connections open at once per process, besides the one that listens for changes.",
    },
    Setting {
        path: "database.pool.maxidle",
        env: &["REGISTRY_DATABASE_POOL_MAXIDLE"],
        default: "10",
        doc: "Most idle connections kept per process; more are closed (checked every 10 s).",
    },
    Setting {
        path: "database.pool.maxlifetime",
        env: &["REGISTRY_DATABASE_POOL_MAXLIFETIME"],
        default: "0 (forever)",
        doc: "Connections older than this are closed instead of reused, e.g. 30m. 0: never.",
    },
    Setting {
        path: "storage.delete.enabled",
        env: &["REGISTRY_STORAGE_DELETE_ENABLED"],
        default: "false",
        doc: "Allow DELETE of blobs, manifests and tags (405 UNSUPPORTED otherwise).",
    },
    Setting {
        path: "storage.maintenance.uploadpurging.age",
        env: &[
            "REGISTRY_UPLOAD_TIMEOUT",
            "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE",
        ],
        default: "3600s",
        doc: "An upload session idle this long is removed. Seconds, or a duration such as 90m.",
    },
    Setting {
        path: "storage.maintenance.uploadpurging.interval",
        env: &[
            "REGISTRY_UPLOAD_CLEANUP_INTERVAL",
            "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_INTERVAL",
        ],
        default: "300s",
        doc: "How often idle upload sessions are looked for.",
    },
    Setting {
        path: "storage.maintenance.uploadpurging.enabled",
        env: &["REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED"],
        default: "true",
        doc: "Remove idle upload sessions.",
    },
    Setting {
        path: "-",
        env: &["REGISTRY_AUTH_TYPE"],
        default: "token when auth.token is set, else basic when auth.htpasswd or auth.secrets is set, else none",
        doc: "none, basic or token: the authentication mode, whatever sections the file has.",
    },
    Setting {
        path: "auth.htpasswd.path",
        env: &["REGISTRY_AUTH_HTPASSWD_PATH", "REGISTRY_AUTH_HTPASSWD"],
        default: "(none)",
        doc: "htpasswd file for basic authentication; bcrypt hashes only (`htpasswd -B`). Re-read within seconds when it changes.",
    },
    Setting {
        path: "auth.htpasswd.realm",
        env: &["REGISTRY_AUTH_HTPASSWD_REALM", "REGISTRY_AUTH_REALM"],
        default: "Berth Registry",
        doc: "Realm sent in the Basic challenge.",
    },
    Setting {
        path: "auth.secrets.directory",
        env: &["REGISTRY_AUTH_SECRETS_DIRECTORY"],
        default: "(none)",
        doc: "Directory of per-namespace credentials: each subfolder <namespace>/ holds files username and password (a mounted Kubernetes Secret). Such a user may pull and push under <namespace> and <namespace>/** (access rules can grant more). Used in basic mode and by the built-in token server, alongside auth.htpasswd.path; re-read every 2 seconds.",
    },
    Setting {
        path: "http.tls.certificate",
        env: &["REGISTRY_HTTP_TLS_CERTIFICATE"],
        default: "(none: plain HTTP)",
        doc: "PEM certificate chain (leaf first); with http.tls.key, the listener speaks TLS (HTTP/2 and HTTP/1.1 by ALPN). Re-read within seconds when it changes.",
    },
    Setting {
        path: "http.tls.key",
        env: &["REGISTRY_HTTP_TLS_KEY"],
        default: "(none)",
        doc: "PEM private key of the certificate (PKCS#8, RSA or EC).",
    },
    Setting {
        path: "http.tls.clientcas",
        env: &["REGISTRY_HTTP_TLS_CLIENTCAS"],
        default: "(none)",
        doc: "PEM CA certificates (list; comma-separated in the variable): clients must present a certificate signed by one of them (mutual TLS).",
    },
    Setting {
        path: "http.tls.minimumtls",
        env: &["REGISTRY_HTTP_TLS_MINIMUMTLS"],
        default: "tls1.2",
        doc: "Oldest TLS version accepted: tls1.2 or tls1.3.",
    },
    Setting {
        path: "http.debug.prometheus.enabled",
        env: &["REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED"],
        default: "true",
        doc: "Serve Prometheus metrics (requests, latency histograms, bytes, auth failures, uploads in progress, storage size), without credentials.",
    },
    Setting {
        path: "http.debug.prometheus.path",
        env: &["REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH"],
        default: "/metrics",
        doc: "Path of the metrics; must start with / and not be under /v2.",
    },
    Setting {
        path: "http.debug.addr",
        env: &["REGISTRY_HTTP_DEBUG_ADDR"],
        default: "(none)",
        doc: "A second listener (host:port) that serves only the metrics; when set, the main listener does not serve them.",
    },
    Setting {
        path: "http.peerurl",
        env: &["REGISTRY_HTTP_PEERURL"],
        default: "http(s)://<http.addr> when it names one interface, else (none)",
        doc: "This process's own URL as the other replicas reach it directly (not the balancer's), such as http://10.0.0.5:5000 (in Kubernetes, the pod IP). A replica that needs a mirrored blob another one is downloading streams it from there as it arrives; without it, they wait until the blob is stored.",
    },
    Setting {
        path: "http.timeouts.header",
        env: &["REGISTRY_HTTP_TIMEOUTS_HEADER"],
        default: "30s",
        doc: "Time a client may take to send a request's headers; slower clients are disconnected.",
    },
    Setting {
        path: "http.timeouts.body",
        env: &["REGISTRY_HTTP_TIMEOUTS_BODY"],
        default: "60s",
        doc: "Longest pause in a request body (upload or manifest); a stalled body ends the request with 400 and the upload session keeps what it had before that request.",
    },
    Setting {
        path: "http.limits.concurrentrequests",
        env: &["REGISTRY_HTTP_LIMITS_CONCURRENTREQUESTS"],
        default: "8192",
        doc: "Most registry requests handled at once; more are answered 429 TOOMANYREQUESTS with Retry-After: 1 (health, readiness and metrics are not counted). 0: no limit.",
    },
    Setting {
        path: "http.limits.uploadsperclient",
        env: &["REGISTRY_HTTP_LIMITS_UPLOADSPERCLIENT"],
        default: "1000",
        doc: "Most upload sessions one client may have open at once (a user; an anonymous client by its address). A session is open from its POST until it is completed, cancelled or purged (storage.maintenance.uploadpurging). More are answered 429 TOOMANYREQUESTS with Retry-After; nothing stored is affected. 0: no limit.",
    },
    Setting {
        path: "http.limits.uploadsperrepository",
        env: &["REGISTRY_HTTP_LIMITS_UPLOADSPERREPOSITORY"],
        default: "2000",
        doc: "Most upload sessions open at once in one repository; as uploadsperclient. 0: no limit.",
    },
    Setting {
        path: "http.limits.uploads",
        env: &["REGISTRY_HTTP_LIMITS_UPLOADS"],
        default: "10000",
        doc: "Most upload sessions open at once in this process; as uploadsperclient. 0: no limit.",
    },
    Setting {
        path: "http.limits.bodyminrate",
        env: &["REGISTRY_HTTP_LIMITS_BODYMINRATE"],
        default: "1024",
        doc: "Slowest request body accepted, in bytes per second, averaged over each period of http.timeouts.body: a body that drips (a byte every few seconds) is cut when a period brings less, instead of being kept alive by each byte. The request fails as a stalled one does. 0: only the pause limit applies.",
    },
    Setting {
        path: "http.timeouts.bodytotal",
        env: &["REGISTRY_HTTP_TIMEOUTS_BODYTOTAL"],
        default: "0 (none)",
        doc: "Longest time one request body may take in all; longer bodies are cut as stalled ones are. 0: no limit (uploads of any size at any rate above http.limits.bodyminrate).",
    },
    Setting {
        path: "http.limits.drain",
        env: &["REGISTRY_HTTP_LIMITS_DRAIN"],
        default: "67108864",
        doc: "Bytes of a request body that Berth reads and discards when it answers before reading the body (401, 404, 413, 416, 429…), so that a client that writes its whole body before reading gets the answer instead of a reset connection. A body declared larger, or not done within http.timeouts.drain, is not drained: the answer is sent and the connection closed. 0: never drain.",
    },
    Setting {
        path: "http.timeouts.drain",
        env: &["REGISTRY_HTTP_TIMEOUTS_DRAIN"],
        default: "10s",
        doc: "Longest time spent draining an unread request body (see http.limits.drain).",
    },
    Setting {
        path: "http.trustedproxies",
        env: &["REGISTRY_HTTP_TRUSTEDPROXIES"],
        default: "(none)",
        doc: "Addresses or networks of reverse proxies (list, or comma-separated in the variable). When the peer is one of them, the client address for access rules with ips is the nearest untrusted address of X-Forwarded-For.",
    },
    Setting {
        path: "accesscontrol.enabled",
        env: &["REGISTRY_ACCESS_CONTROL_ENABLED"],
        default: "true when accesscontrol.config is set",
        doc: "Apply repository access rules.",
    },
    Setting {
        path: "accesscontrol.config",
        env: &["REGISTRY_ACCESS_CONTROL_CONFIG"],
        default: "(none)",
        doc: "JSON file of access rules (defaultPolicy, adminUsers, anonymous, rules); see docs/auth.md.",
    },
    Setting {
        path: "auth.throttle.enabled",
        env: &["REGISTRY_AUTH_THROTTLE_ENABLED"],
        default: "true",
        doc: "Throttle failed logins (Basic on registry requests and the built-in token server): after the free attempts, each failure doubles the wait (1 s, 2 s, 4 s, … up to auth.throttle.maxbackoff) before that user name at that client address, or that address, may try again; attempts during the wait get 429 TOOMANYREQUESTS with Retry-After, without checking the password.",
    },
    Setting {
        path: "auth.throttle.freeattempts",
        env: &["REGISTRY_AUTH_THROTTLE_FREEATTEMPTS"],
        default: "5",
        doc: "Failed logins of one user name from one client address before back-off starts. A success resets it. The same user at another address is not affected.",
    },
    Setting {
        path: "auth.throttle.addressfreeattempts",
        env: &["REGISTRY_AUTH_THROTTLE_ADDRESSFREEATTEMPTS"],
        default: "20",
        doc: "Failed logins from one client address (all user names together; IPv6 by /64) before back-off starts for that address; raise it when many users share one address (NAT, a proxy not listed in http.trustedproxies).",
    },
    Setting {
        path: "auth.throttle.maxbackoff",
        env: &["REGISTRY_AUTH_THROTTLE_MAXBACKOFF"],
        default: "15m",
        doc: "Longest wait after repeated failures. A key that has not failed for twice this (at least a minute) is forgotten.",
    },
    Setting {
        path: "auth.token.realm",
        env: &["REGISTRY_AUTH_TOKEN_REALM"],
        default: "(required in token mode)",
        doc: "URL of the token endpoint, sent in the Bearer challenge (with the built-in server: this registry's URL + auth.token.server.path).",
    },
    Setting {
        path: "auth.token.service",
        env: &["REGISTRY_AUTH_TOKEN_SERVICE"],
        default: "(required in token mode)",
        doc: "Service name: sent in the challenge, expected as the tokens' aud.",
    },
    Setting {
        path: "auth.token.issuer",
        env: &["REGISTRY_AUTH_TOKEN_ISSUER"],
        default: "(required in token mode)",
        doc: "Expected iss of tokens (and the iss the built-in server writes).",
    },
    Setting {
        path: "auth.token.rootcertbundle",
        env: &["REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE"],
        default: "(none)",
        doc: "PEM certificates: tokens with an x5c chain ending at one of them, or a kid equal to the RFC 7638 thumbprint or libtrust fingerprint of one of their keys, are trusted.",
    },
    Setting {
        path: "auth.token.jwks",
        env: &["REGISTRY_AUTH_TOKEN_JWKS"],
        default: "(none)",
        doc: "JWKS file; tokens are matched to its keys by kid, and a key's alg (if given) must equal the token's.",
    },
    Setting {
        path: "auth.token.jwksurl",
        env: &["REGISTRY_AUTH_TOKEN_JWKSURL"],
        default: "(none)",
        doc: "URL of a JWKS (http or https), fetched at start, every 5 minutes, and again (at most every 10 s) when a token names an unknown kid.",
    },
    Setting {
        path: "auth.token.publickey",
        env: &["REGISTRY_AUTH_TOKEN_PUBLICKEY"],
        default: "(none)",
        doc: "One PEM public key (or certificate); tokens without kid are verified with it when it is the only key.",
    },
    Setting {
        path: "auth.token.leeway",
        env: &["REGISTRY_AUTH_TOKEN_LEEWAY"],
        default: "60s",
        doc: "Clock skew allowed when checking exp, nbf and iat.",
    },
    Setting {
        path: "auth.token.server.enabled",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_ENABLED"],
        default: "false",
        doc: "Run the built-in token server in this process (users from auth.htpasswd.path and auth.secrets.directory, grants from the access rules).",
    },
    Setting {
        path: "auth.token.server.key",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_KEY"],
        default: "(required with the server)",
        doc: "PEM (PKCS#8) signing key file(s), oldest first, comma-separated in the variable; the last one signs, all verify. `berth keygen` makes one.",
    },
    Setting {
        path: "auth.token.server.certificate",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_CERTIFICATE"],
        default: "(none)",
        doc: "Certificate of the signing key; when set, tokens carry it as x5c so registries with this certificate in their rootcertbundle (distribution 2.x and 3.x) accept them.",
    },
    Setting {
        path: "auth.token.server.path",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_PATH"],
        default: "/auth",
        doc: "Path of the token endpoint (the JWKS is served at /.well-known/jwks.json).",
    },
    Setting {
        path: "auth.token.server.expiration",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_EXPIRATION", "REGISTRY_TOKEN_EXPIRY"],
        default: "300s",
        doc: "Lifetime of issued access tokens.",
    },
    Setting {
        path: "auth.token.server.refreshexpiration",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_REFRESHEXPIRATION"],
        default: "2160h (90 days)",
        doc: "Lifetime of refresh tokens (docker login's stored credential), from 60s to 8784h. A refresh token also stops working as soon as its user's password (htpasswd entry or secret) changes or the user is removed.",
    },
    Setting {
        path: "auth.token.server.kid",
        env: &["REGISTRY_AUTH_TOKEN_SERVER_KID"],
        default: "thumbprint",
        doc: "kid of issued tokens: thumbprint (RFC 7638) or libtrust (distribution 2.x fingerprint).",
    },
    Setting {
        path: "storage.maintenance.gc.enabled",
        env: &["REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED"],
        default: "false",
        doc: "Online garbage collection: every interval, remove blob links no manifest of the repository references (and blob files no repository links any more), sparing anything younger than the grace period. Safe while pushes run.",
    },
    Setting {
        path: "storage.maintenance.gc.interval",
        env: &["REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL"],
        default: "24h",
        doc: "Time between two online collections (the first runs one interval after start).",
    },
    Setting {
        path: "storage.maintenance.gc.grace",
        env: &["REGISTRY_STORAGE_MAINTENANCE_GC_GRACE"],
        default: "1h",
        doc: "Blobs and manifests linked or pushed less than this long ago are never collected (an upload whose manifest is still to come).",
    },
    Setting {
        path: "storage.maintenance.gc.untagged",
        env: &["REGISTRY_STORAGE_MAINTENANCE_GC_UNTAGGED"],
        default: "false",
        doc: "Also remove manifests no tag reaches (directly, through an index, or as a referrer of a reached manifest), then their blobs.",
    },
    Setting {
        path: "storage.maintenance.readonly.enabled",
        env: &["REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED"],
        default: "false",
        doc: "Read-only maintenance mode: pulls work; pushes, mounts and deletes answer 405 UNSUPPORTED saying so; idle upload sessions are kept.",
    },
    Setting {
        path: "storage.maintenance.uploadpurging.dryrun",
        env: &["REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_DRYRUN"],
        default: "false",
        doc: "When true, idle upload sessions are kept (purging is off).",
    },
    Setting {
        path: "http.headers.<Name>",
        env: &["REGISTRY_HTTP_HEADERS_<Name>"],
        default: "(none)",
        doc: "Headers added to every response: a list of values per name (the variable takes a YAML list such as ['*'] or a single value). With Access-Control-Allow-Origin set, OPTIONS preflights on /v2/ are answered (204, no credentials needed) and responses expose Docker-Content-Digest, Location, Range, Link, Docker-Upload-UUID and WWW-Authenticate to browsers.",
    },
    Setting {
        path: "cache.memory",
        env: &["REGISTRY_CACHE_MEMORY"],
        default: "128MiB",
        doc: "Memory budget of the read cache (blob sizes and manifests, with their keys), in bytes or with a unit (KiB, MiB, GiB; KB, MB, GB). Least useful answers are evicted first; 0 turns the cache off.",
    },
    Setting {
        path: "cache.blobmemory",
        env: &["REGISTRY_CACHE_BLOBMEMORY"],
        default: "64MiB",
        doc: "Memory budget of the small-blob cache: the bytes of blobs up to cache.blobmaxsize, served from memory on a GET. 0 turns it off.",
    },
    Setting {
        path: "cache.blobmaxsize",
        env: &["REGISTRY_CACHE_BLOBMAXSIZE"],
        default: "256KiB",
        doc: "Largest blob the small-blob cache keeps; reads up to this size are also done in one go.",
    },
    Setting {
        path: "proxy.remoteurl",
        env: &["REGISTRY_PROXY_REMOTEURL"],
        default: "(none)",
        doc: "distribution's pull-through cache: the whole registry mirrors this upstream (scheme, host and port, such as https://registry-1.docker.io). Pushes are refused; pulls of what is not stored are fetched from the upstream, stored and served as they arrive.",
    },
    Setting {
        path: "proxy.username",
        env: &["REGISTRY_PROXY_USERNAME"],
        default: "(anonymous)",
        doc: "User for the upstream of proxy.remoteurl.",
    },
    Setting {
        path: "proxy.password",
        env: &["REGISTRY_PROXY_PASSWORD"],
        default: "(none)",
        doc: "Password or access token for the upstream of proxy.remoteurl (never logged).",
    },
    Setting {
        path: "proxy.tagttl",
        env: &["REGISTRY_PROXY_TAGTTL"],
        default: "5m",
        doc: "How long a tag read from the upstream is served without asking it again; after that the cached image is served while one request checks the upstream in the background, and is kept when the upstream is down or rate-limits.",
    },
    Setting {
        path: "proxy.budget",
        env: &["REGISTRY_PROXY_BUDGET"],
        default: "(no limit)",
        doc: "Bytes of mirrored content kept (such as 50GiB); beyond it the least recently pulled whole images are evicted. A blob a local image or another cached image references stays.",
    },
    Setting {
        path: "proxy.ttl",
        env: &["REGISTRY_PROXY_TTL"],
        default: "(not used)",
        doc: "Accepted for compatibility (distribution deletes proxied content after it); Berth keeps mirrored content until proxy.budget needs the room, and refreshes tags after proxy.tagttl.",
    },
    Setting {
        path: "mirrors",
        env: &["REGISTRY_MIRRORS"],
        default: "(none)",
        doc: "Upstream registries, each served under a local prefix: a list of {name, url, prefix, hosts, username, password | passwordfile | passwordenv, cafile, insecure, tagttl, repositories, push, timeout, budget} (the variable takes the list in YAML). See docs/mirroring.md.",
    },
    Setting {
        path: "pagination.defaultlimit",
        env: &["REGISTRY_PAGINATION_DEFAULT_LIMIT"],
        default: "100",
        doc: "Page size of tag lists and the catalog when the client gives no n.",
    },
    Setting {
        path: "pagination.maxlimit",
        env: &["REGISTRY_PAGINATION_MAX_LIMIT"],
        default: "1000",
        doc: "Largest page; a larger n is capped to it.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_documented() {
        let doc = include_str!("../../../docs/configuration.md");
        for s in SETTINGS {
            let names = std::iter::once(s.path).chain(s.env.iter().copied());
            for name in names.filter(|n| *n != "-") {
                assert!(
                    doc.contains(&format!("`{name}`")),
                    "docs/configuration.md does not document {name}"
                );
            }
        }
    }
}
