// A local OpenID Connect provider for sign-in tests, built on npm `oidc-provider`.
//
//   node provider.mjs --port P --client-id ID [--client-secret S] --redirect-uri URI [--redirect-uri URI2]
//                     [--accounts JSON] [--token-auth-method client_secret_basic|client_secret_post|none]
//                     [--id-token-ttl SECONDS] [--code-ttl SECONDS]
//
// Accounts come from --accounts or the OIDC_TEST_ACCOUNTS env variable: a JSON list of
// {"sub", "email", "email_verified"?, "name"?, "password"?}. The dev login form takes an
// account's email or sub, and its password when it has one (any password otherwise). Any other
// login ends the authorization with error=access_denied at the client's redirect URI, as a
// real provider's refusal would.
// PKCE is required for every client. Further clients can be added at run time through dynamic
// registration (POST /reg), so a test can register a redirect URI that is only known later.
// Prints one line `ready <issuer>` on stdout once it listens on 127.0.0.1.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    'redirect-uri': { type: 'string', multiple: true },
    accounts: { type: 'string' },
    'token-auth-method': { type: 'string' },
    'id-token-ttl': { type: 'string' },
    'code-ttl': { type: 'string' },
  },
});

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

if (!args.port || !args['client-id'] || !args['redirect-uri']) {
  fail('--port, --client-id and --redirect-uri are required');
}

const defaultAccounts = [{ sub: 'test-user-1', email: 'test.user@example.org', name: 'Test User' }];
const accounts = JSON.parse(args.accounts ?? process.env.OIDC_TEST_ACCOUNTS ?? JSON.stringify(defaultAccounts));

function lookupAccount(login, password) {
  const account = accounts.find((a) => a.email === login || a.sub === login);
  return account && (account.password === undefined || account.password === password) ? account : undefined;
}

const secret = args['client-secret'];
const authMethod = args['token-auth-method'] ?? (secret ? 'client_secret_basic' : 'none');

// A fresh signing key per run: nothing secret is checked in, and a token from one run
// cannot be replayed against another.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: randomBytes(8).toString('hex') };

const issuer = `http://127.0.0.1:${args.port}`;

const configuration = {
  clients: [
    {
      client_id: args['client-id'],
      ...(secret ? { client_secret: secret } : {}),
      redirect_uris: args['redirect-uri'],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: authMethod,
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // Google puts email and email_verified in the id_token; relying parties are written for that.
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  scopes: ['openid', 'email', 'profile'],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
  },
  ttl: {
    IdToken: Number(args['id-token-ttl'] ?? 3600),
    AuthorizationCode: Number(args['code-ttl'] ?? 60),
  },
  async findAccount(_ctx, sub) {
    const account = accounts.find((a) => a.sub === sub);
    if (!account) {
      return undefined;
    }
    return {
      accountId: account.sub,
      async claims() {
        return {
          sub: account.sub,
          email: account.email,
          email_verified: account.email_verified ?? true,
          ...(account.name ? { name: account.name } : {}),
        };
      },
    };
  },
};

const provider = new Provider(issuer, configuration);

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString()));
}

// The dev login form would take any text as the account ID. Map the login to the account's
// sub (so the id_token's sub is stable whichever the user typed) and refuse unknown users.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || !/^\/interaction\/[^/]+$/.test(ctx.path) || !ctx.is('application/x-www-form-urlencoded')) {
    return next();
  }
  const form = await readForm(ctx.req);
  if (form.prompt !== 'login') {
    ctx.request.body = form; // the body stream is spent; oidc-provider reads this instead
    return next();
  }
  const account = lookupAccount(form.login, form.password);
  const result = account
    ? { login: { accountId: account.sub } }
    : { error: 'access_denied', error_description: 'unknown test user or wrong password' };
  ctx.respond = false;
  return provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
});
provider.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});

// The fixture stops this process by PID with SIGTERM; exit promptly and cleanly.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
