"""boto3 baseline for the S3 client benchmark: the same 1 GiB multipart upload from memory in fixed parts,
INFLIGHT parts at a time (a thread pool), ListParts, Complete, ranged GET, presigned GET with a Range header.
Usage: bench_boto3.py VARIANT PART_MIB INFLIGHT   (VARIANT default | lean: checksums only when required).
Prints the same tab-separated line as s3bench. CPU = this process's getrusage (user + system)."""
import os, resource, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config

MIB, GIB = 1 << 20, 1 << 30
variant, part, inflight = sys.argv[1], int(sys.argv[2]) * MIB, int(sys.argv[3])
env = os.environ
extra = {"request_checksum_calculation": "when_required"} if variant == "lean" else {}
s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env["S3_REGION"],
                  aws_access_key_id=env["S3_ACCESS_KEY"], aws_secret_access_key=env["S3_SECRET_KEY"],
                  config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                max_pool_connections=max(10, inflight), **extra))
bucket, key = env["S3_BUCKET"], f"bench/boto3-{os.getpid()}"
data = os.urandom(GIB)
parts = [data[i:i + part] for i in range(0, GIB, part)]  # sliced before timing

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def weed_cpu():
    pid = env.get("WEED_PID")
    if not pid:
        return float("nan")
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

c0, w0, t0 = cpu(), weed_cpu(), time.monotonic()
up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
def put(i):
    return s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i + 1, Body=parts[i])["ETag"]
with ThreadPoolExecutor(inflight) as pool:
    etags = list(pool.map(put, range(len(parts))))
listed = [p["ETag"] for p in s3.list_parts(Bucket=bucket, Key=key, UploadId=up)["Parts"]]
s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up, MultipartUpload={
    "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
secs, cpus, wcpu = time.monotonic() - t0, cpu() - c0, weed_cpu() - w0
lo, n = 700 * MIB + 12345, MIB
rng = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={lo}-{lo + n - 1}")["Body"].read()
url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)
pre = urllib.request.urlopen(urllib.request.Request(url, headers={"Range": f"bytes={lo}-{lo + n - 1}"})).read()
s3.delete_object(Bucket=bucket, Key=key)
ok = lambda b: "yes" if b == data[lo:lo + n] else "WRONG"
gb = GIB / 1e9
print(f"boto3\t{variant}\t{part // MIB}\t{inflight}\t{secs:.2f}\t{gb * 1e3 / secs:.0f}\t{cpus:.2f}\t{cpus / gb:.2f}\t"
      f"{wcpu:.2f}\t{'yes' if listed == etags else 'WRONG'}\t{ok(rng)}\t{ok(pre)}")
