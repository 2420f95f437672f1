// Starts s3rver (a second S3-compatible server, which checks access key ids) for the storage
// tests. Settings come from the environment; prints `listening` once it accepts requests.
const S3rver = require(process.env.S3RVER_MODULE);
new S3rver({
  port: Number(process.env.S3RVER_PORT),
  address: '127.0.0.1',
  silent: true,
  directory: process.env.S3RVER_DIR,
  configureBuckets: [{ name: process.env.S3RVER_BUCKET }],
})
  .run()
  .then(
    () => console.log('listening'),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
