// NanoCommander for SillyTavern: an alpha slider for composite models (large + alpha * (tuned - base)).
// A third-party UI extension: it only listens to SillyTavern's own events and edits the request body
// they hand it, never SillyTavern's files. The pure functions are exported for tests.

export const MODULE = 'nanocommander';
export const FALLBACK_URL = 'http://127.0.0.1:11434';
export const DEFAULTS = Object.freeze({
    enabled: true,
    alpha: 1.0,
    member: 'composite',
    serverUrl: '', // empty: follow the URL of SillyTavern's API connection
});
// API types whose request the extension edits: Text Completion's KoboldCpp, Ooba, Ollama and Generic
// (textgen type names) and KoboldAI Classic (main API "kobold").
export const SUPPORTED_APIS = Object.freeze(['koboldcpp', 'kobold', 'ooba', 'ollama', 'generic']);
export const MEMBERS = Object.freeze(['composite', 'large', 'tuned', 'base']);
// SillyTavern's own controls, present in every version's page: older getContext() lacks the settings,
// so these are the fallback (the textgen module's settings are not globals).
const SERVER_INPUTS = Object.freeze({
    koboldcpp: '#koboldcpp_api_url_text',
    ooba: '#textgenerationwebui_api_url_text',
    ollama: '#ollama_api_url_text',
    generic: '#generic_api_url_text',
    kobold: '#api_url_text',
});

export function clampAlpha(value) {
    const x = Number(value);
    return Number.isFinite(x) ? Math.min(4, Math.max(0, x)) : DEFAULTS.alpha;
}

/** The extension's settings inside SillyTavern's extension_settings, created with defaults. */
export function loadSettings(extensionSettings) {
    const saved = extensionSettings[MODULE] ?? {};
    const settings = { ...DEFAULTS, ...saved };
    settings.alpha = clampAlpha(settings.alpha);
    if (!MEMBERS.includes(settings.member)) settings.member = 'composite';
    // 0.1.0 saved its default URL; that now means "follow the connection" again
    if (typeof settings.serverUrl !== 'string' || settings.serverUrl === FALLBACK_URL) settings.serverUrl = '';
    extensionSettings[MODULE] = settings;
    return settings;
}

/** The value of one of SillyTavern's inputs or selects, or null (no DOM, no such element, empty). */
export function domValue(selector, doc = globalThis.document) {
    const value = doc?.querySelector?.(selector)?.value;
    return typeof value === 'string' && value ? value : null;
}

/**
 * SillyTavern's current API type: the Text Completion type (koboldcpp, ooba, ollama, generic, ...)
 * or the main API name (kobold, openai, novel, ...). Works across versions: a request body names its
 * own type (`api_type`), getContext() has `textCompletionSettings` only in newer versions, and the
 * page's #main_api / #textgen_type selects exist in all of them.
 */
export function currentApiType(ctx, params = null, doc = globalThis.document) {
    if (params?.api_type) return params.api_type;
    const main = ctx?.mainApi ?? domValue('#main_api', doc);
    if (main !== 'textgenerationwebui') return main ?? null;
    return ctx?.textCompletionSettings?.type ?? domValue('#textgen_type', doc) ?? null;
}

/** A server URL as NanoCommander's root: no trailing slash, no /v1 or /api suffix. */
export function serverRoot(url) {
    if (typeof url !== 'string' || !url.trim()) return null;
    return url.trim().replace(/\/+$/, '').replace(/\/(v1|api)$/, '');
}

/** The URL SillyTavern is connected to for `apiType`, or null where it cannot be told. */
export function connectedUrl(ctx, apiType, doc = globalThis.document) {
    let url = null;
    if (apiType === 'kobold') {
        url = domValue(SERVER_INPUTS.kobold, doc);
    } else if (apiType) {
        url = ctx?.textCompletionSettings?.server_urls?.[apiType]
            ?? (typeof ctx?.getTextGenServer === 'function' ? ctx.getTextGenServer(apiType) : null)
            ?? domValue(SERVER_INPUTS[apiType] ?? '', doc);
    }
    return serverRoot(url);
}

/** Where the member list comes from: the URL set in the drawer, else the connected API's. */
export function serverUrl(settings, ctx, apiType, lastSeen = null, doc = globalThis.document) {
    return serverRoot(settings?.serverUrl) ?? connectedUrl(ctx, apiType, doc) ?? serverRoot(lastSeen) ?? FALLBACK_URL;
}

/** Add alpha (and member, unless composite) to a generation request body; other APIs are left alone. */
export function applyAlpha(params, settings, apiType) {
    if (!params || !settings?.enabled || !SUPPORTED_APIS.includes(apiType)) return params;
    params.alpha = clampAlpha(settings.alpha);
    if (settings.member && settings.member !== 'composite') params.member = settings.member;
    else delete params.member;
    return params;
}

/** The model name to ask /api/show about, for the current API. */
export function currentModel(ctx, apiType, doc = globalThis.document) {
    if (apiType === 'ollama') return ctx?.textCompletionSettings?.ollama_model || domValue('#ollama_model', doc);
    const status = ctx?.onlineStatus;
    if (!status || ['no_connection', 'inactive', 'Valid'].includes(status)) return null;
    return String(status).replace(/^koboldcpp\//, '');
}

/** Readable lines for the composite object of an /api/show reply. */
export function describeMembers(show) {
    const composite = show?.composite;
    if (!composite) return 'Not a NanoCommander composite model.';
    const lines = [`recipe alpha: ${composite.alpha}`];
    for (const [role, info] of Object.entries(composite.members ?? {})) {
        const source = Object.values(info?.source ?? {}).find((v) => typeof v === 'string');
        const parts = [info?.name ?? source?.split(/[\\/]/).pop(), info?.architecture, info?.parameter_count && sizeLabel(info.parameter_count),
            info?.quantization].filter(Boolean);
        lines.push(`${role}: ${parts.join(', ') || '?'}`);
    }
    return lines.join('\n');
}

function sizeLabel(n) {
    if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
    return n >= 1e6 ? `${Math.round(n / 1e6)}M` : n >= 1e3 ? `${Math.round(n / 1e3)}K` : String(n);
}

export async function fetchShow(serverUrl, model, fetchFn = globalThis.fetch) {
    const response = await fetchFn(`${serverUrl.replace(/\/+$/, '')}/api/show`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model }),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.json();
}

/**
 * Wire the extension into SillyTavern. `ctx` is SillyTavern.getContext(); `deps` lets tests pass
 * `$` (jQuery), `fetch`, `loadHtml` and `getContext` (fresh context for each event).
 */
export async function init(ctx, deps = {}) {
    const $ = deps.$ ?? globalThis.jQuery;
    const fetchFn = deps.fetch ?? globalThis.fetch;
    const getContext = deps.getContext ?? (() => ctx);
    const types = ctx.eventTypes ?? ctx.event_types;
    const settings = loadSettings(ctx.extensionSettings);
    const save = () => getContext().saveSettingsDebounced?.();

    let lastServer = null; // the api_server of the last request SillyTavern built
    // Synchronous on purpose: SillyTavern 1.12 does not await this event before sending the body.
    const onTextCompletion = (params) => {
        const live = getContext();
        lastServer = params?.api_server ?? lastServer;
        applyAlpha(params, live.extensionSettings[MODULE], currentApiType(live, params));
    };
    const onGenerateData = (data) => {
        const live = getContext();
        if (currentApiType(live) !== 'kobold') return;
        lastServer = data?.api_server ?? lastServer;
        applyAlpha(data, live.extensionSettings[MODULE], 'kobold');
    };
    ctx.eventSource.on(types.TEXT_COMPLETION_SETTINGS_READY, onTextCompletion);
    ctx.eventSource.on(types.GENERATE_AFTER_DATA, onGenerateData);
    const urlNow = () => {
        const live = getContext();
        return serverUrl(live.extensionSettings[MODULE], live, currentApiType(live), lastServer);
    };

    const refresh = async () => {
        if (!$) return;
        const live = getContext();
        const model = currentModel(live, currentApiType(live));
        $('#nanocommander_server').attr?.('placeholder', urlNow());
        if (!model) return $('#nanocommander_members').text('(no model connected)');
        try {
            const show = await fetchShow(urlNow(), model, fetchFn);
            $('#nanocommander_members').text(`${model}\n${describeMembers(show)}`);
        } catch (err) {
            $('#nanocommander_members').text(`${model}: cannot reach NanoCommander (${err.message})`);
        }
    };
    if (types.ONLINE_STATUS_CHANGED) ctx.eventSource.on(types.ONLINE_STATUS_CHANGED, refresh);

    if ($) {
        const loadHtml = deps.loadHtml ?? (async () => (await fetchFn(new URL('./settings.html', import.meta.url))).text());
        $('#extensions_settings2').append(await loadHtml());
        const showAlpha = () => $('#nanocommander_alpha_value').text(settings.alpha.toFixed(2));
        $('#nanocommander_enabled').prop('checked', settings.enabled).on('change', function () {
            settings.enabled = !!$(this).prop('checked');
            save();
        });
        $('#nanocommander_alpha').val(settings.alpha).on('input', function () {
            settings.alpha = clampAlpha($(this).val());
            showAlpha();
            save();
        });
        $('#nanocommander_member').val(settings.member).on('change', function () {
            settings.member = MEMBERS.includes($(this).val()) ? $(this).val() : 'composite';
            save();
        });
        $('#nanocommander_server').val(settings.serverUrl).on('change', function () {
            settings.serverUrl = String($(this).val()).trim() || DEFAULTS.serverUrl;
            save();
            refresh();
        });
        $('#nanocommander_refresh').on('click', refresh);
        $('#nanocommander_note').text('Alpha reaches NanoCommander with Text Completion \u203a KoboldCpp or Ooba; '
            + 'see the README for Generic, Ollama and KoboldAI Classic.');
        showAlpha();
        await refresh();
    }
    return { settings, onTextCompletion, onGenerateData, refresh, serverUrl: urlNow };
}

// In SillyTavern (a browser with the SillyTavern global and jQuery), start once the page is ready.
if (globalThis.SillyTavern?.getContext && globalThis.jQuery) {
    globalThis.jQuery(() => init(globalThis.SillyTavern.getContext(), {
        getContext: () => globalThis.SillyTavern.getContext(),
    }));
}
